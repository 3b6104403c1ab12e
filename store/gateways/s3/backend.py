"""The cluster operations the S3 gateway is built from, on top of the smart client.

Three patterns cover every update of shared state:

* **swap** — set or remove one omap key and get the value it replaced, in one atomic
  request (``omap_get`` then ``omap_set``/``omap_rm`` in the same operation list), on an
  object that must exist. Publishing an object, deleting one and recording a part are
  swaps: no retry loop, no contention between writers of different keys of one shard.
* **compare-and-set** — read some keys and the object's version, compute the change, and
  apply it on condition that the version is unchanged; retried when another writer got in
  between. Used for rare updates with invariants (a bucket name is taken once, a user
  name once).
* **pages** — ``omap_list`` whose reply must fit one datagram: a page the daemon refuses
  as too large is asked again at half the size.

Cluster failures become S3 errors here: no answer in time or a degraded placement group
is ``503 ServiceUnavailable`` (clients retry those), anything else ``500 InternalError``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import trio

from store.client.api import Client
from store.errors import ClientTimeout, Code, RemoteError
from store.gateways.s3 import errors
from store.gateways.s3.errors import S3Error

log = logging.getLogger("store.s3")

MAX_CAS_ATTEMPTS = 50
T = TypeVar("T")


class Gone(Exception):
    """The object an operation needed does not exist (any more)."""


def cluster_error(exc: RemoteError | ClientTimeout) -> S3Error:
    """The S3 error to answer for a cluster failure nobody expected."""
    if isinstance(exc, ClientTimeout) or exc.code in (
        Code.EAGAIN,
        Code.EDEGRADED,
        Code.ETIMEDOUT,
        Code.ENOSPC,
        Code.INPROGRESS,
    ):
        log.warning("cluster unavailable: %s", exc)
        return errors.service_unavailable()
    log.error("cluster error: %s", exc)
    return errors.internal_error()


def omap_ops(changes: Mapping[str, bytes | None], *, removing: bool = True) -> list[list[Any]]:
    """The operations that set (and, with ``removing``, remove: None) these omap keys."""
    sets = {k: v for k, v in changes.items() if v is not None}
    removals = [k for k, v in changes.items() if v is None]
    ops: list[list[Any]] = []
    if sets:
        ops.append(["omap_set", sets])
    if removals and removing:
        ops.append(["omap_rm", removals])
    return ops


async def contention_pause(attempt: int) -> None:
    """Wait a little (longer each time) before reading again after losing a race."""
    await trio.sleep(random.uniform(0, 0.005 * (attempt + 1)))


def gave_up(name: str) -> S3Error:
    log.warning("compare-and-set on %s gave up after %d attempts", name, MAX_CAS_ATTEMPTS)
    return errors.slow_down()


class Backend:
    def __init__(self, client: Client, pool: str) -> None:
        self.client = client
        self.pool = pool

    @property
    def max_piece(self) -> int:
        return self.client.max_piece

    async def execute(
        self, name: str, ops: list[list[Any]], cond: dict[str, Any] | None = None
    ) -> dict[Any, Any]:
        """One request; ENOENT and ECANCELED stay RemoteErrors, the rest become S3Errors."""
        try:
            return await self.client.execute(self.pool, name, ops, cond)
        except RemoteError as exc:
            if exc.code in (Code.ENOENT, Code.ECANCELED, Code.EEXIST, Code.EFBIG):
                raise
            raise cluster_error(exc) from None
        except ClientTimeout as exc:
            raise cluster_error(exc) from None

    # --- omap ------------------------------------------------------------------------------

    async def omap_get(self, name: str, keys: list[str]) -> dict[str, bytes]:
        """The values of ``keys`` that exist; raises Gone when the object does not."""
        try:
            reply = await self.execute(name, [["omap_get", keys]])
        except RemoteError as exc:
            if exc.code == Code.ENOENT:
                raise Gone(name) from None
            raise cluster_error(exc) from None
        return {str(k): bytes(v) for k, v in reply["res"][0].items()}

    async def swap(
        self,
        name: str,
        key: str,
        value: bytes | None,
        also: Mapping[str, bytes | None] | None = None,
    ) -> bytes | None:
        """Set (or with None remove) ``key``, and the keys of ``also`` with it, and return
        the previous value of ``key``, atomically.

        The object must exist: raises Gone when it does not (a deleted bucket's index)."""
        changes = omap_ops({key: value, **(also or {})})
        try:
            reply = await self.execute(name, [["omap_get", [key]], *changes], {"exists": True})
        except RemoteError as exc:
            if exc.code in (Code.ECANCELED, Code.ENOENT):
                raise Gone(name) from None
            raise cluster_error(exc) from None
        result = reply.get("res") or [None]
        found = result[0]
        if not isinstance(found, dict):
            # A retransmission answered from the PG log (a new primary, or one whose
            # first answer was an error): it applied, but what it replaced is not known
            # any more, so that data is not queued for GC; the orphan sweep finds it.
            log.warning(
                "swap of %r in %s: previous value unknown; its data is left to "
                "`store s3 gc --orphans`",
                key,
                name,
            )
            return None
        old = found.get(key)
        return bytes(old) if old is not None else None

    async def compare_and_set(
        self,
        name: str,
        keys: list[str],
        update: Callable[[dict[str, bytes]], tuple[Mapping[str, bytes | None], T]],
        *,
        must_exist: bool = False,
    ) -> T:
        """Apply ``update`` to the current values of ``keys`` and write what it returns
        (None removes a key) unless the object changed meanwhile; then start again.

        ``update`` returns (changes, result) and may raise to refuse. With ``must_exist``,
        a missing object raises Gone instead of being created."""
        for attempt in range(MAX_CAS_ATTEMPTS):
            try:
                reply = await self.execute(name, [["omap_get", keys]])
                current = {str(k): bytes(v) for k, v in reply["res"][0].items()}
                cond: dict[str, Any] = {"version": list(reply["v"])}
            except RemoteError as exc:
                if exc.code != Code.ENOENT:
                    raise cluster_error(exc) from None
                if must_exist:
                    raise Gone(name) from None
                current, cond = {}, {"exists": False}
            changes, result = update(current)
            # Nothing to remove from an object that does not exist yet.
            ops = omap_ops(changes, removing=cond.get("exists") is not False)
            if not ops:
                return result
            try:
                await self.execute(name, ops, cond)
                return result
            except RemoteError as exc:
                if exc.code != Code.ECANCELED:
                    raise cluster_error(exc) from None
            await contention_pause(attempt)
        raise gave_up(name)

    async def read_versioned(self, name: str, ops: list[list[Any]]) -> tuple[list[Any], list[Any]]:
        """The results of read-only ``ops`` and the object's version, for
        :meth:`write_if_unchanged`; raises Gone when the object does not exist."""
        try:
            reply = await self.execute(name, ops)
        except RemoteError as exc:
            if exc.code == Code.ENOENT:
                raise Gone(name) from None
            raise cluster_error(exc) from None
        return list(reply["res"]), list(reply["v"])

    async def write_if_unchanged(
        self, name: str, changes: Mapping[str, bytes | None], version: list[Any]
    ) -> bool:
        """Set (None: remove) omap keys if the object is still at ``version``; False when
        it changed meanwhile (read again and recompute)."""
        ops = omap_ops(changes)
        if not ops:
            return True
        try:
            await self.execute(name, ops, {"version": version})
        except RemoteError as exc:
            if exc.code == Code.ECANCELED:
                return False
            if exc.code == Code.ENOENT:
                raise Gone(name) from None
            raise cluster_error(exc) from None
        return True

    async def omap_page(
        self, name: str, start_after: str | None, limit: int, prefix: str = ""
    ) -> tuple[list[tuple[str, bytes]], bool]:
        """Up to ``limit`` entries after ``start_after`` (fewer when they would not fit one
        reply; ``more`` says whether any remain). Raises Gone for a missing object."""
        limit = max(1, min(limit, 10_000))
        while True:
            try:
                reply = await self.execute(name, [["omap_list", start_after, limit, prefix]])
            except RemoteError as exc:
                if exc.code == Code.ENOENT:
                    raise Gone(name) from None
                if exc.code == Code.EFBIG and limit > 1:
                    limit //= 2
                    continue
                raise cluster_error(exc) from None
            result = reply["res"][0]
            entries = [(str(k), bytes(v)) for k, v in result["entries"]]
            return entries, bool(result["more"])

    # --- whole objects ---------------------------------------------------------------------

    async def create(self, name: str) -> None:
        await self.execute(name, [["create", False]])

    async def delete(self, name: str, cond: dict[str, Any] | None = None) -> bool:
        """Delete ``name``; False when it did not exist. ECANCELED stays a RemoteError."""
        try:
            await self.execute(name, [["delete"]], cond)
            return True
        except RemoteError as exc:
            if exc.code == Code.ENOENT:
                return False
            if exc.code == Code.ECANCELED:
                raise
            raise cluster_error(exc) from None

    async def write_data(self, name: str, data: bytes) -> None:
        """Write a new data object (one request when it fits a datagram)."""
        try:
            if len(data) <= self.client.max_piece:
                await self.client.execute(self.pool, name, [["write_full", data]])
            else:
                await self.client.write(self.pool, name, data)
        except (RemoteError, ClientTimeout) as exc:
            raise cluster_error(exc) from None

    async def read_data(self, name: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``; raises Gone for a missing object."""
        return b"".join(await self.read_extents(name, offset, length))

    async def read_extents(self, name: str, offset: int, length: int) -> list[bytes | bytearray]:
        """The same bytes as the pieces they were read in, not joined."""
        try:
            return await self.client.read_extents(self.pool, name, offset, length)
        except RemoteError as exc:
            if exc.code == Code.ENOENT:
                raise Gone(name) from None
            raise cluster_error(exc) from None
        except ClientTimeout as exc:
            raise cluster_error(exc) from None
