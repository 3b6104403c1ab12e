"""S3 users and their access keys, kept in the cluster (omap of ``s3.users``).

A user has a name (what the operator types), a canonical id (64 hex digits, what S3
documents show as an owner's ``ID``) and any number of access keys, each an access key id
and a secret. Gateways look keys up on every request and remember them for ``KEY_TTL``
seconds, so a removed key stops working everywhere within that time.
"""

from __future__ import annotations

import re
import secrets
import string
import time
from collections.abc import Mapping

from store.gateways.s3 import layout
from store.gateways.s3.backend import Backend, Gone
from store.gateways.s3.layout import USERS, AccessKey, User

KEY_TTL = 5.0
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+=,-]{0,63}$")
_KEY_ALPHABET = string.ascii_uppercase + string.digits


class UserError(Exception):
    """An administrative request that cannot be done (says what to do instead)."""


def new_access_key() -> str:
    return "SK" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(18))


def new_secret() -> str:
    return secrets.token_urlsafe(30)[:40]


def valid_user_name(name: str) -> bool:
    return bool(_NAME.match(name))


class Users:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._keys: dict[str, tuple[float, AccessKey | None, User | None]] = {}

    # --- lookups (every request) -----------------------------------------------------------

    async def lookup_key(self, access_key: str) -> tuple[AccessKey, User] | None:
        now = time.monotonic()
        cached = self._keys.get(access_key)
        if cached is not None and now - cached[0] < KEY_TTL:
            key, user = cached[1], cached[2]
            return (key, user) if key is not None and user is not None else None
        found: tuple[AccessKey, User] | None = None
        if 0 < len(access_key) <= 128:
            try:
                values = await self.backend.omap_get(USERS, [f"k.{access_key}"])
            except Gone:
                values = {}
            raw = values.get(f"k.{access_key}")
            if raw is not None:
                key = AccessKey.from_bytes(raw)
                user_raw = (await self.backend.omap_get(USERS, [f"u.{key.user}"])).get(
                    f"u.{key.user}"
                )
                if user_raw is not None:
                    found = (key, User.from_bytes(user_raw))
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[access_key] = (now, *(found or (None, None)))
        return found

    # --- administration --------------------------------------------------------------------

    async def create(self, name: str) -> tuple[User, AccessKey]:
        if not valid_user_name(name):
            raise UserError(
                f"invalid user name {name!r}: 1 to 64 letters, digits and _.@+=,- "
                "starting with a letter or digit"
            )
        now = time.time()
        user = User(name, secrets.token_hex(32), now)
        key = AccessKey(new_access_key(), new_secret(), name, now)

        def update(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], None]:
            if f"u.{name}" in current:
                raise UserError(f"user {name!r} already exists")
            if f"k.{key.access_key}" in current:
                raise UserError("access key collision: try again")
            return {f"u.{name}": user.to_bytes(), f"k.{key.access_key}": key.to_bytes()}, None

        await self.backend.compare_and_set(USERS, [f"u.{name}", f"k.{key.access_key}"], update)
        return user, key

    async def all(self) -> list[tuple[User, list[AccessKey]]]:
        users: dict[str, User] = {}
        keys: dict[str, list[AccessKey]] = {}
        after: str | None = None
        while True:
            try:
                page, more = await self.backend.omap_page(USERS, after, 1000)
            except Gone:
                return []
            for name, raw in page:
                if name.startswith("u."):
                    user = User.from_bytes(raw)
                    users[user.name] = user
                elif name.startswith("k."):
                    key = AccessKey.from_bytes(raw)
                    keys.setdefault(key.user, []).append(key)
            if not more or not page:
                break
            after = page[-1][0]
        return [(users[n], sorted(keys.get(n, []), key=lambda k: k.created)) for n in sorted(users)]

    async def get(self, name: str) -> tuple[User, list[AccessKey]]:
        for user, keys in await self.all():
            if user.name == name:
                return user, keys
        raise UserError(f"no user named {name!r}")

    async def remove(self, name: str, owned_buckets: list[str]) -> None:
        if owned_buckets:
            raise UserError(
                f"user {name!r} still owns buckets {', '.join(sorted(owned_buckets))}: "
                "delete them first"
            )
        _, keys = await self.get(name)
        names = [f"u.{name}"] + [f"k.{k.access_key}" for k in keys]

        def update(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], None]:
            if f"u.{name}" not in current:
                raise UserError(f"no user named {name!r}")
            return {n: None for n in current}, None

        await self.backend.compare_and_set(USERS, names, update)

    async def add_key(self, name: str) -> AccessKey:
        key = AccessKey(new_access_key(), new_secret(), name, time.time())

        def update(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], None]:
            if f"u.{name}" not in current:
                raise UserError(f"no user named {name!r}")
            if f"k.{key.access_key}" in current:
                raise UserError("access key collision: try again")
            return {f"k.{key.access_key}": key.to_bytes()}, None

        await self.backend.compare_and_set(USERS, [f"u.{name}", f"k.{key.access_key}"], update)
        return key

    async def remove_key(self, access_key: str) -> str:
        """Remove an access key; returns the name of the user it belonged to."""

        def update(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], str]:
            raw = current.get(f"k.{access_key}")
            if raw is None:
                raise UserError(f"no access key {access_key!r}")
            return {f"k.{access_key}": None}, layout.AccessKey.from_bytes(raw).user

        result = await self.backend.compare_and_set(USERS, [f"k.{access_key}"], update)
        self._keys.pop(access_key, None)
        return result
