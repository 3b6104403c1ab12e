"""Image headers and the pool's image directory, changed atomically.

Both are read-modify-write cycles made safe by the compound conditional operations of
the object store: read the object and its version in one request, compute the change,
write it back on condition that the version is still the one read. When another writer
got there first the condition fails (ECANCELED) and the cycle starts again from a fresh
read, after a short random pause so that contenders spread out.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import trio

from store.client.api import Client
from store.errors import Code, RemoteError
from store.image.errors import DamagedHeader, ImageError, ImageExists, ImageNotFound
from store.image.model import (
    DIRECTORY,
    DIRECTORY_KEY_PREFIX,
    MAX_HEADER_BYTES,
    ImageHeader,
    check_image_id,
    directory_key,
    header_object,
)

MAX_ATTEMPTS = 60
Version = list[int]


async def _pause(attempt: int) -> None:
    await trio.sleep(random.uniform(0, 0.005 * 2 ** min(attempt, 6)))


def _version(reply: dict[Any, Any]) -> Version:
    raw = reply.get("v")
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise DamagedHeader(f"a reply without a version: {raw!r}")
    return [int(raw[0]), int(raw[1])]


# --- headers -------------------------------------------------------------------------


async def read_header(
    client: Client, pool: str, image_id: str, what: str, *, timeout: float | None = None
) -> tuple[ImageHeader, Version]:
    """The header of image ``image_id`` (called ``what`` in errors) and its version."""
    try:
        reply = await client.execute(
            pool, header_object(image_id), [["read", 0, MAX_HEADER_BYTES]], timeout=timeout
        )
    except RemoteError as exc:
        if exc.code == Code.ENOENT:
            raise ImageNotFound(f"image {what} has no header (id {image_id})") from None
        raise
    header = ImageHeader.decode_untrusted(bytes(reply["res"][0]), what)
    if header.id != image_id:
        raise DamagedHeader(f"the header of image {what} names id {header.id}, not {image_id}")
    return header, _version(reply)


async def write_new_header(client: Client, pool: str, header: ImageHeader) -> None:
    """Create the header of a new image; fails with EEXIST if its id is taken."""
    await client.execute(
        pool, header_object(header.id), [["create", True], ["write_full", header.encode()]]
    )


async def update_header(
    client: Client,
    pool: str,
    image_id: str,
    what: str,
    change: Callable[[ImageHeader], ImageHeader],
    *,
    timeout: float | None = None,
) -> ImageHeader:
    """Apply ``change`` to the current header atomically; returns the header now stored.

    ``change`` may raise to refuse; it is called again on a fresh header after every
    lost race, so it must decide from its argument alone.
    """
    for attempt in range(MAX_ATTEMPTS):
        header, version = await read_header(client, pool, image_id, what, timeout=timeout)
        new = change(header)
        if new == header:
            return header
        try:
            await client.execute(
                pool,
                header_object(image_id),
                [["write_full", new.encode()]],
                {"version": version},
                timeout=timeout,
            )
            return new
        except RemoteError as exc:
            if exc.code != Code.ECANCELED:
                raise
        await _pause(attempt)
    raise ImageError(f"the header of image {what} kept changing while being updated; try again")


async def delete_header(client: Client, pool: str, image_id: str) -> None:
    try:
        await client.delete(pool, header_object(image_id))
    except RemoteError as exc:
        if exc.code != Code.ENOENT:
            raise


# --- the directory -------------------------------------------------------------------


async def lookup(client: Client, pool: str, name: str) -> str:
    """The id of image ``name``; raises ImageNotFound."""
    key = directory_key(name)
    try:
        found = await client.omap_get(pool, DIRECTORY, [key])
    except RemoteError as exc:
        if exc.code == Code.ENOENT:
            raise ImageNotFound(f"no image {pool}/{name}") from None
        raise
    if key not in found:
        raise ImageNotFound(f"no image {pool}/{name}")
    try:
        return check_image_id(bytes(found[key]).decode("ascii"))
    except (UnicodeDecodeError, DamagedHeader):
        raise DamagedHeader(f"the directory entry of image {pool}/{name} is damaged") from None


async def add_entry(client: Client, pool: str, name: str, image_id: str) -> None:
    """Record ``name -> image_id``; raises ImageExists if the name is taken."""
    key = directory_key(name)
    value = image_id.encode("ascii")
    for attempt in range(MAX_ATTEMPTS):
        try:
            reply = await client.execute(pool, DIRECTORY, [["omap_get", [key]]])
        except RemoteError as exc:
            if exc.code != Code.ENOENT:
                raise
            ops: list[list[Any]] = [["create", True], ["omap_set", {key: value}]]
            cond: dict[str, Any] = {"exists": False}
        else:
            if key in reply["res"][0]:
                raise ImageExists(f"image {pool}/{name} already exists")
            ops, cond = [["omap_set", {key: value}]], {"version": _version(reply)}
        try:
            await client.execute(pool, DIRECTORY, ops, cond)
            return
        except RemoteError as exc:
            if exc.code not in (Code.ECANCELED, Code.EEXIST):
                raise
        await _pause(attempt)
    raise ImageError(f"the image directory of pool {pool} kept changing; try again")


async def remove_entry(client: Client, pool: str, name: str, image_id: str) -> None:
    """Forget ``name`` if it still names ``image_id``."""
    key = directory_key(name)
    for attempt in range(MAX_ATTEMPTS):
        try:
            reply = await client.execute(pool, DIRECTORY, [["omap_get", [key]]])
        except RemoteError as exc:
            if exc.code == Code.ENOENT:
                return
            raise
        if reply["res"][0].get(key) != image_id.encode("ascii"):
            return
        try:
            await client.execute(
                pool, DIRECTORY, [["omap_rm", [key]]], {"version": _version(reply)}
            )
            return
        except RemoteError as exc:
            if exc.code != Code.ECANCELED:
                raise
        await _pause(attempt)
    raise ImageError(f"the image directory of pool {pool} kept changing; try again")


async def list_entries(client: Client, pool: str) -> list[tuple[str, str]]:
    """Every (name, id) of the pool's directory, in name order."""
    entries: list[tuple[str, str]] = []
    cursor: str | None = None
    while True:
        try:
            page, more = await client.omap_list(
                pool, DIRECTORY, cursor, 1000, prefix=DIRECTORY_KEY_PREFIX
            )
        except RemoteError as exc:
            if exc.code == Code.ENOENT:
                return entries
            raise
        for key, value in page:
            entries.append(
                (key[len(DIRECTORY_KEY_PREFIX) :], bytes(value).decode("ascii", "replace"))
            )
        if not more or not page:
            return entries
        cursor = page[-1][0]
