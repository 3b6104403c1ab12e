"""HTTP objects in the cluster: look up, stream out, upload and publish, delete.

The layout is described in ``layout.py``. The rules that keep readers safe:

* A head changes only by one compound write conditioned on the version the writer just
  read (or on the head not existing), so the manifest, type and inline data a reader sees
  always belong together, and of two concurrent PUTs each is applied whole, one after
  the other (the later one wins).
* Stripes are written under a fresh upload id before anything points at them, and never
  changed after. A gateway killed mid-upload leaves stripes nobody references: harmless
  to readers, found later through the collection entry written before the first stripe.
* Before a head stops pointing at stripes (overwrite, delete), a collection entry for
  them is written with a grace period, so readers already streaming them can finish.
  The collector (``collector.py``) removes stripes only when their entry's time has
  passed *and* the head no longer points at them.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

from store.client.api import Client
from store.errors import Code, RemoteError, StoreError
from store.gateways.http.conditions import etag_of
from store.gateways.http.layout import (
    STRIPE_SIZE,
    XATTR_CONTENT_TYPE,
    XATTR_MANIFEST,
    CollectEntry,
    Manifest,
    gc_object,
    stripe_name,
)
from store.gateways.http.names import is_reserved
from store.gateways.web.server import BodyReader, BodyTooLarge

log = logging.getLogger("store.http")

SEGMENT = 1024 * 1024  # bytes of an upload written as one client write; divides STRIPE_SIZE
WRITES_IN_FLIGHT = 4  # segments being written at once, per upload
READ_CHUNK = 1024 * 1024  # bytes of a download fetched as one client read
PREFETCH = 1  # chunks fetched ahead of the one being sent
PUBLISH_ATTEMPTS = 20
RECEIVE = 256 * 1024


class ObjectChanged(StoreError):
    """A plain object changed while it was being sent; the response is cut short."""


class PreconditionFailed(StoreError):
    def __init__(self, status: int) -> None:
        super().__init__(f"precondition failed ({status})")
        self.status = status


class TooBusy(StoreError):
    """A head kept changing under a writer: every attempt lost the race."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    version: tuple[int, int]
    mtime: float
    size: int
    content_type: str | None
    manifest: Manifest | None  # None: a plain cluster object
    head_data: bytes  # the first bytes of an inline or plain object, when fetched

    @property
    def etag(self) -> str:
        return etag_of(self.version)

    @property
    def upload(self) -> str | None:
        return self.manifest.upload if self.manifest is not None else None


Precondition = Callable[[ObjectInfo | None], int | None]


def first_error(exc: BaseException) -> BaseException:
    """The first error of (nested) exception groups that is not a cancellation."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


@contextmanager
def ungrouped() -> Iterator[None]:
    """Raise the client's errors as themselves, not wrapped in the groups its nurseries
    make, so that callers can catch RemoteError."""
    try:
        yield
    except BaseExceptionGroup as group:
        raise first_error(group) from None


class HttpObjects:
    def __init__(
        self,
        client: Client,
        nursery: trio.Nursery,
        *,
        upload_lease: float = 600.0,
        read_grace: float = 60.0,
    ) -> None:
        self.client = client
        self.nursery = nursery  # for prefetching and background clean-up
        self.upload_lease = upload_lease
        self.read_grace = read_grace
        # What fits in the head's single atomic write (and in one read reply, next to
        # the stat and the attributes).
        self.inline_max = client.max_piece - 4096

    # --- looking up -----------------------------------------------------------------------

    async def head(self, pool: str, name: str, *, with_data: bool = False) -> ObjectInfo | None:
        ops: list[list[Any]] = [["stat"], ["getxattrs"]]
        if with_data:
            ops.append(["read", 0, self.inline_max])
        try:
            reply = await self.client.execute(pool, name, ops)
        except RemoteError as exc:
            if exc.code == Code.ENOENT:
                return None
            if exc.code == Code.EFBIG and with_data:  # large attributes: fetch data apart
                return await self.head(pool, name)
            raise
        stat, xattrs = reply["res"][0], reply["res"][1]
        manifest_raw = xattrs.get(XATTR_MANIFEST)
        manifest = Manifest.decode_untrusted(manifest_raw) if manifest_raw is not None else None
        raw_type = xattrs.get(XATTR_CONTENT_TYPE)
        content_type = raw_type.decode("latin-1") if isinstance(raw_type, bytes) else None
        raw_size = int(stat["size"])
        if manifest is not None and raw_size != (0 if manifest.upload else manifest.size):
            # The head was written by something else than the gateway since (its
            # attributes survive a plain write): its own bytes are the object now.
            manifest = None
        upload = manifest.upload if manifest is not None else None
        size = manifest.size if manifest is not None and upload else raw_size
        head_data = b"" if upload or not with_data else bytes(reply["res"][2])
        return ObjectInfo(
            name=name,
            version=(int(stat["version"][0]), int(stat["version"][1])),
            mtime=float(stat["mtime"]),
            size=size,
            content_type=content_type,
            manifest=manifest,
            head_data=head_data,
        )

    async def list_objects(self, pool: str, prefix: str) -> list[tuple[str, int]]:
        """(name, size) of the objects under `prefix`, in name order, internal ones left out.
        Sizes of striped objects are 0 here: see `sizes`."""
        with ungrouped():
            found = await self.client.ls(pool, prefix)
        return [(name, size) for name, size in found if not is_reserved(name)]

    async def sizes(self, pool: str, names: list[str]) -> dict[str, int]:
        """The sizes of `names` as the gateway serves them (absent ones left out)."""
        found: dict[str, int] = {}
        limiter = trio.CapacityLimiter(32)

        async def one(name: str) -> None:
            async with limiter:
                info = await self.head(pool, name)
                if info is not None:
                    found[name] = info.size

        with ungrouped():
            async with trio.open_nursery() as nursery:
                for name in names:
                    nursery.start_soon(one, name)
        return found

    # --- reading --------------------------------------------------------------------------

    def body(
        self, pool: str, info: ObjectInfo, start: int, end: int
    ) -> bytes | AsyncIterator[bytes]:
        """Bytes start..end (inclusive) of the object `info` describes."""
        if end < start:
            return b""
        upload = info.upload
        if upload is None:
            if end < len(info.head_data):
                return info.head_data[start : end + 1]
            return self._prefetched(self._plain_fetches(pool, info, start, end))
        assert info.manifest is not None
        fetches: list[Callable[[], Awaitable[bytes]]] = []
        for index, offset, length in info.manifest.pieces(start, end):
            for at in range(offset, offset + length, READ_CHUNK):
                size = min(READ_CHUNK, offset + length - at)
                fetches.append(self._fetch(pool, stripe_name(upload, index), at, size))
        return self._prefetched(fetches)

    def _fetch(
        self, pool: str, name: str, offset: int, length: int
    ) -> Callable[[], Awaitable[bytes]]:
        async def fetch() -> bytes:
            with ungrouped():
                data = await self.client.read(pool, name, offset, length)
            if len(data) != length:
                raise ObjectChanged(f"{name} holds {len(data)} bytes at {offset}, not {length}")
            return data

        return fetch

    def _plain_fetches(
        self, pool: str, info: ObjectInfo, start: int, end: int
    ) -> list[Callable[[], Awaitable[bytes]]]:
        # A plain object can change between reads; each chunk is followed by a stat, and
        # the same version before and after (versions only grow) proves it is of one piece.
        def checked(offset: int, length: int) -> Callable[[], Awaitable[bytes]]:
            fetch = self._fetch(pool, info.name, offset, length)

            async def run() -> bytes:
                data = await fetch()
                now = await self.client.stat(pool, info.name)
                if now.version != info.version:
                    raise ObjectChanged(f"{info.name} changed while it was being sent")
                return data

            return run

        fetches: list[Callable[[], Awaitable[bytes]]] = []
        position = start
        if start < len(info.head_data):
            prefix = info.head_data[start:]

            async def already() -> bytes:
                return prefix

            fetches.append(already)
            position += len(prefix)
        for at in range(position, end + 1, READ_CHUNK):
            fetches.append(checked(at, min(READ_CHUNK, end + 1 - at)))
        return fetches

    async def _prefetched(
        self, fetches: list[Callable[[], Awaitable[bytes]]]
    ) -> AsyncIterator[bytes]:
        """Run `fetches` in order in a background task, up to PREFETCH ahead of the
        consumer, so that the cluster read of one chunk overlaps sending the previous."""
        send, receive = trio.open_memory_channel[bytes | Exception](PREFETCH)
        scope = trio.CancelScope()

        async def produce() -> None:
            with scope, send:
                for fetch in fetches:
                    try:
                        data: bytes | Exception = await fetch()
                    except Exception as exc:
                        data = exc
                    try:
                        await send.send(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the consumer is gone
                    if isinstance(data, Exception):
                        return

        self.nursery.start_soon(produce)
        try:
            async for item in receive:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            scope.cancel()  # first, so that a blocked send ends by cancellation
            receive.close()

    # --- writing --------------------------------------------------------------------------

    async def put(
        self,
        pool: str,
        name: str,
        body: BodyReader,
        *,
        content_type: str,
        max_size: int,
        precondition: Precondition | None = None,
    ) -> tuple[bool, tuple[int, int]]:
        """Store the body as object `name`; (created, new version)."""
        if body.length is not None and body.length > max_size:
            raise BodyTooLarge(max_size)
        start = bytearray()
        while len(start) <= self.inline_max:
            chunk = await body.read(RECEIVE)
            if not chunk:
                break
            start += chunk
        if len(start) <= self.inline_max:
            manifest = Manifest(len(start))
            return await self._publish(
                pool, name, bytes(start), manifest, content_type, precondition
            )
        upload = uuid.uuid4().hex
        manifest = await self._upload(pool, name, upload, start, body, max_size)
        try:
            return await self._publish(pool, name, b"", manifest, content_type, precondition)
        except BaseException:
            self._abandon(pool, name, upload, manifest.stripes)
            raise

    async def _upload(
        self, pool: str, name: str, upload: str, start: bytearray, body: BodyReader, max_size: int
    ) -> Manifest:
        """Write the body into stripes as it arrives, a few segments in flight."""
        await self._record(pool, upload, CollectEntry(name, time.time() + self.upload_lease))
        refreshed = time.monotonic()
        in_flight = trio.Semaphore(WRITES_IN_FLIGHT)
        pending, written, total = start, 0, len(start)

        async def write(data: bytes, position: int) -> None:
            try:
                index, offset = divmod(position, STRIPE_SIZE)
                with ungrouped():
                    await self.client.write(pool, stripe_name(upload, index), data, offset)
            finally:
                in_flight.release()

        try:
            with ungrouped():
                async with trio.open_nursery() as nursery:
                    while True:
                        while len(pending) >= SEGMENT or (body.consumed and pending):
                            piece = bytes(pending[:SEGMENT])
                            del pending[:SEGMENT]
                            await in_flight.acquire()
                            nursery.start_soon(write, piece, written)
                            written += len(piece)
                        if body.consumed:
                            break
                        chunk = await body.read(RECEIVE)
                        total += len(chunk)
                        if total > max_size:
                            raise BodyTooLarge(max_size)
                        pending += chunk
                        if time.monotonic() - refreshed > self.upload_lease / 4:
                            entry = CollectEntry(name, time.time() + self.upload_lease)
                            await self._record(pool, upload, entry)
                            refreshed = time.monotonic()
        except BaseException:
            self._abandon(pool, name, upload, -(-written // STRIPE_SIZE))
            raise
        return Manifest(total, upload, STRIPE_SIZE)

    async def _publish(
        self,
        pool: str,
        name: str,
        data: bytes,
        manifest: Manifest,
        content_type: str,
        precondition: Precondition | None,
    ) -> tuple[bool, tuple[int, int]]:
        ops: list[list[Any]] = [
            ["write_full", data],
            ["setxattr", XATTR_CONTENT_TYPE, content_type.encode("latin-1")],
            ["setxattr", XATTR_MANIFEST, manifest.encode()],
        ]
        for _ in range(PUBLISH_ATTEMPTS):
            current = await self.head(pool, name)
            if precondition is not None:
                status = precondition(current)
                if status is not None:
                    raise PreconditionFailed(status)
            if current is not None and current.upload is not None:
                assert current.manifest is not None
                await self._retire(pool, current.name, current.upload, current.manifest.stripes)
            if manifest.upload is not None:  # renew: publishing may take a moment
                entry = CollectEntry(name, time.time() + self.upload_lease, manifest.stripes)
                await self._record(pool, manifest.upload, entry)
            cond = {"version": list(current.version)} if current else {"exists": False}
            try:
                reply = await self.client.execute(pool, name, ops, cond)
            except RemoteError as exc:
                if exc.code == Code.ECANCELED:
                    continue  # the head changed since we looked: look again
                raise
            if manifest.upload is not None:
                await self._forget_quietly(pool, manifest.upload)
            version = (int(reply["v"][0]), int(reply["v"][1]))
            return current is None, version
        raise TooBusy(f"object {name!r} kept changing; {PUBLISH_ATTEMPTS} attempts failed")

    async def delete(self, pool: str, name: str, precondition: Precondition | None = None) -> bool:
        """Delete object `name`; False when there was none."""
        for _ in range(PUBLISH_ATTEMPTS):
            current = await self.head(pool, name)
            if precondition is not None:
                status = precondition(current)
                if status is not None:
                    raise PreconditionFailed(status)
            if current is None:
                return False
            if current.upload is not None:
                assert current.manifest is not None
                await self._retire(pool, name, current.upload, current.manifest.stripes)
            try:
                await self.client.execute(
                    pool, name, [["delete"]], {"version": list(current.version)}
                )
            except RemoteError as exc:
                if exc.code == Code.ECANCELED:
                    continue
                if exc.code == Code.ENOENT:
                    return False
                raise
            return True
        raise TooBusy(f"object {name!r} kept changing; {PUBLISH_ATTEMPTS} attempts failed")

    # --- collection entries ---------------------------------------------------------------

    async def _record(self, pool: str, upload: str, entry: CollectEntry) -> None:
        await self.client.omap_set(pool, gc_object(upload), {upload: entry.encode()})

    async def _retire(self, pool: str, name: str, upload: str, stripes: int) -> None:
        """Stripes about to be unreferenced: removable once readers had time to finish."""
        await self._record(pool, upload, CollectEntry(name, time.time() + self.read_grace, stripes))

    async def _forget_quietly(self, pool: str, upload: str) -> None:
        try:
            await self.client.omap_rm(pool, gc_object(upload), [upload])
        except StoreError as exc:  # the collector will find it referenced and drop it
            log.info("could not drop the collection entry of upload %s: %s", upload, exc)

    def _abandon(self, pool: str, name: str, upload: str, stripes: int) -> None:
        """An upload that will not be published: let the collector remove its stripes
        once writes still in flight have surely landed (after the read grace)."""

        async def mark() -> None:
            try:
                await self._retire(pool, name, upload, stripes)
            except Exception as exc:
                log.warning(
                    "upload %s of %r abandoned; its entry stays until its lease ends: %s",
                    upload,
                    name,
                    exc,
                )

        self.nursery.start_soon(mark)
