"""Reading and writing an open image, object by object, in parallel.

Theory of operation
-------------------
A request on the image is cut at object boundaries (:mod:`store.image.layout`) and the
pieces run concurrently, each one a request to the primary of that object's placement
group (past one datagram, a write is staged in pieces and committed by one more request,
landing whole; a read is several requests). A missing object reads as zeros; a read that
comes back short ends where the object ends.

The image remembers what it learns of its objects: missing, or how large
(:mod:`store.image.sizes`, which keeps that true while requests of several connections
overlap). A writer that holds the image's lock is the only one changing it, so what it
learned stays true for as long as it holds the lock (``cache_for = None``); a reader
keeps it briefly. That lets a read of a never-written range or an ``extents`` call be
answered without a request.

Every write, zero and trim is counted while in flight. The cluster acknowledges a write
only once every replica has it durably, so ``flush`` has nothing to push: it waits until
every mutation that was in flight when it was called has finished, whichever connection
sent it. That is what makes a flush on one connection cover the writes of all of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio

from store.client.api import Client
from store.errors import Code, RemoteError
from store.image.layout import Extent, Piece, extents, objects_spanned, pieces
from store.image.model import ImageHeader, data_object
from store.image.sizes import ObjectSizes

T = TypeVar("T")
OBJECTS_IN_FLIGHT = 64
# `extents` stats at most this many unknown objects per call; the answer may then cover
# less than asked, which NBD allows (the client asks again from where it stops).
EXTENTS_OBJECTS_PER_CALL = 512
READER_CACHE_SECONDS = 1.0
ZERO_ATTEMPTS = 4


def remote_code(exc: BaseException) -> Code | None:
    """The code of a RemoteError, also inside groups whose every error has the same code."""
    if isinstance(exc, RemoteError):
        return exc.code
    if isinstance(exc, BaseExceptionGroup):
        codes = {remote_code(inner) for inner in exc.exceptions}
        if len(codes) == 1:
            return codes.pop()
    return None


class WritesInFlight:
    """Mutations under way; ``wait`` returns once every one begun before it has ended."""

    def __init__(self) -> None:
        self._next = 0
        self._running: dict[int, trio.Event] = {}

    def __len__(self) -> int:
        return len(self._running)

    @contextmanager
    def tracking(self) -> Iterator[None]:
        ticket, done = self._next, trio.Event()
        self._next += 1
        self._running[ticket] = done
        try:
            yield
        finally:
            del self._running[ticket]
            done.set()

    async def wait(self) -> None:
        for done in list(self._running.values()):
            await done.wait()


def _no_fence() -> None:
    return None


class Image:
    def __init__(
        self,
        client: Client,
        pool: str,
        header: ImageHeader,
        *,
        cache_for: float | None = READER_CACHE_SECONDS,
    ) -> None:
        self.client = client
        self.pool = pool
        self.header = header
        self.what = f"{pool}/{header.name}"
        # Called before every change; raises to refuse it (a writer that lost its lock).
        self.fence: Callable[[], None] = _no_fence
        self.writes = WritesInFlight()
        self.sizes = ObjectSizes(trio.current_time, cache_for)
        self._limit = trio.CapacityLimiter(OBJECTS_IN_FLIGHT)

    @property
    def size(self) -> int:
        return self.header.size

    @property
    def object_size(self) -> int:
        return self.header.object_size

    def refresh(self, header: ImageHeader) -> None:
        """A newer header of the same image (its size may have changed)."""
        self.header = header

    def _name(self, index: int) -> str:
        return data_object(self.header.id, index)

    async def _each(self, items: Iterable[T], fn: Callable[[T], Awaitable[None]]) -> None:
        async def one(item: T) -> None:
            async with self._limit:
                await fn(item)

        todo = list(items)
        if len(todo) == 1:
            await one(todo[0])
            return
        async with trio.open_nursery() as nursery:
            for item in todo:
                nursery.start_soon(one, item)

    # --- reads -------------------------------------------------------------------------

    async def read(self, offset: int, length: int) -> bytes:
        return b"".join(await self.read_parts(offset, length))

    async def read_parts(self, offset: int, length: int) -> list[bytes | bytearray]:
        """Bytes ``[offset, offset + length)`` as consecutive parts, zeros where nothing
        was written: the extents as they were read, for a caller that copies them on
        (nbdkit's buffer) without joining them first."""
        parts = list(pieces(offset, length, self.object_size))
        found: list[list[bytes | bytearray]] = [[] for _ in parts]

        async def one(at: int) -> None:
            found[at] = await self._read_piece(parts[at])

        await self._each(range(len(parts)), one)
        out: list[bytes | bytearray] = []
        for piece, got in zip(parts, found, strict=True):
            out.extend(got)
            short = piece.length - sum(len(extent) for extent in got)
            if short:
                out.append(bytes(short))  # past the object's end, or no object
        return out

    async def _read_piece(self, piece: Piece) -> list[bytes | bytearray]:
        """The piece's bytes as its object has them, in the extents they were read in:
        short where the object ends, none where there is no object."""
        known, size = self.sizes.get(piece.index)
        want = piece.length
        if known:
            want = min(want, max(0, (size or 0) - piece.offset))
            if want == 0:
                return []
        stamp = self.sizes.stamp(piece.index)
        try:
            data = await self.client.read_extents(
                self.pool, self._name(piece.index), piece.offset, want
            )
        except (RemoteError, BaseExceptionGroup) as exc:
            if remote_code(exc) != Code.ENOENT:
                raise
            self.sizes.observed(piece.index, None, stamp)
            return []
        got = sum(len(extent) for extent in data)
        if 0 < got < want:
            self.sizes.observed(piece.index, piece.offset + got, stamp)
        return data

    # --- changes -----------------------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> None:
        self.fence()
        view = memoryview(data)

        async def one(piece: Piece) -> None:
            chunk: bytes | memoryview = view[piece.start : piece.start + piece.length]
            if not isinstance(data, bytes):  # a view of bytes cannot change under the write
                chunk = bytes(chunk)
            with self.sizes.changing(piece.index) as change:
                await self.client.write(self.pool, self._name(piece.index), chunk, piece.offset)
                change.grown(piece.end)

        with self.writes.tracking():
            await self._each(pieces(offset, len(data), self.object_size), one)

    async def zero(self, offset: int, length: int, *, may_trim: bool) -> None:
        """Make the range read as zeros; ``may_trim``: free whole objects instead."""
        self.fence()
        with self.writes.tracking():
            await self._each(
                pieces(offset, length, self.object_size),
                lambda piece: self._zero_piece(piece, may_trim),
            )

    async def trim(self, offset: int, length: int) -> None:
        await self.zero(offset, length, may_trim=True)

    def _covers_object(self, piece: Piece) -> bool:
        """Whether the piece covers every byte of its object that lies inside the image."""
        base = piece.index * self.object_size
        return piece.offset == 0 and (
            piece.length == self.object_size or base + piece.end >= self.size
        )

    async def _zero_piece(self, piece: Piece, may_trim: bool) -> None:
        known, size = self.sizes.get(piece.index)
        if may_trim and known and (size is None or size <= piece.offset):
            return  # already a hole
        name = self._name(piece.index)
        with self.sizes.changing(piece.index) as change:
            if may_trim and self._covers_object(piece):
                try:
                    await self.client.delete(self.pool, name)
                except RemoteError as exc:
                    if exc.code != Code.ENOENT:
                        raise
                change.missing()
                return
            for _ in range(ZERO_ATTEMPTS):
                # Zero what exists (the daemon drops whole zero blocks). A missing object
                # already reads as zeros; without may_trim it is created, sparse, so that
                # the range is allocated as the client asked.
                ops: list[list[Any]] = [["zero", piece.offset, piece.length]]
                if await self._if(name, ops, exists=True):
                    change.same()
                    return
                if may_trim:
                    change.missing()
                    return
                if await self._if(name, [["truncate", piece.end]], exists=False):
                    change.sized(piece.end)
                    return
        raise RemoteError(Code.EAGAIN, f"object {name} kept appearing and disappearing")

    async def _if(self, name: str, ops: list[list[Any]], *, exists: bool) -> bool:
        try:
            await self.client.execute(self.pool, name, ops, {"exists": exists})
            return True
        except RemoteError as exc:
            if exc.code == Code.ECANCELED:
                return False
            raise

    async def flush(self) -> None:
        await self.writes.wait()

    # --- extents -----------------------------------------------------------------------

    async def extents(self, offset: int, length: int) -> list[Extent]:
        """Data and holes from ``offset``; may stop short of ``length``, never empty."""
        span = objects_spanned(offset, length, self.object_size)
        unknown = [i for i in span if not self.sizes.get(i)[0]][:EXTENTS_OBJECTS_PER_CALL]
        await self._each(unknown, self._stat)
        known: dict[int, int | None] = {}
        for index in span:
            found, size = self.sizes.get(index)
            if not found:
                break
            known[index] = size
        result = extents(offset, length, self.object_size, known)
        if not result:
            # The first object changed while it was looked at: calling it data is
            # always true (holes are only a hint).
            first = next(pieces(offset, length, self.object_size))
            result = [Extent(offset, first.length, hole=False)]
        return result

    async def _stat(self, index: int) -> None:
        stamp = self.sizes.stamp(index)
        try:
            st = await self.client.stat(self.pool, self._name(index))
        except RemoteError as exc:
            if exc.code != Code.ENOENT:
                raise
            self.sizes.observed(index, None, stamp)
            return
        self.sizes.observed(index, st.size, stamp)
