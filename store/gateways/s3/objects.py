"""Object data in the cluster: striped writes as a body arrives, ranged streaming reads.

Theory of operation
-------------------
An object's bytes are cut into stripes (4 MiB by default): stripe 0 is the *head* object,
stripe i the object ``<head>.<i>``. A multipart object's head holds instead a manifest of
its parts, each part striped the same way under its own head. A range read is planned as
a list of segments, each inside one stripe, and streamed in order.

Memory is what bounds a gateway, so it is budgeted in *stripe tokens*: a writer holds one
for the stripe it is filling, and hands it to the task that writes that stripe to the
cluster (at most two per upload in flight); a reader holds one for the stripe it is
sending and takes a second, only if one is free, to read the next while the first goes
out. No holder of a token ever waits for another token without first letting its own go
to a task that completes without one, so the budget cannot deadlock; it only makes
requests wait when the gateway is busy.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import TracebackType

import trio

from store.gateways.s3 import layout
from store.gateways.s3.backend import Backend, Gone
from store.gateways.s3.layout import STRIPE_SIZE, Entry, Part

log = logging.getLogger("store.s3")

WRITES_IN_FLIGHT = 2


class DataLost(Exception):
    """Stored data is shorter than its entry says, or missing after the first byte."""


class Budget:
    """Stripe tokens for writes and reads (see the module docstring)."""

    def __init__(self, write_tokens: int = 16, read_tokens: int = 16) -> None:
        self.write = trio.Semaphore(write_tokens)
        self.read = trio.Semaphore(read_tokens)


class DataWriter:
    """Writes a body, as it arrives, to a new striped data object named ``head``."""

    def __init__(
        self, backend: Backend, head: str, budget: Budget, stripe: int = STRIPE_SIZE
    ) -> None:
        self.backend = backend
        self.head = head
        self.stripe = stripe
        self.budget = budget
        self.size = 0
        self.stripes = 0  # stripes handed to writers
        self._buffer: list[bytes] | None = None  # the stripe being filled, as pieces
        self._buffered = 0  # bytes in it
        self._nursery: trio.Nursery | None = None
        self._nursery_cm = trio.open_nursery()
        self._in_flight = trio.Semaphore(WRITES_IN_FLIGHT)

    async def __aenter__(self) -> DataWriter:
        self._nursery = await self._nursery_cm.__aenter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._buffer is not None:
            self._buffer = None
            self.budget.write.release()
        try:
            suppressed = await self._nursery_cm.__aexit__(kind, exc, tb)
        except BaseException:
            await self.discard()
            raise
        if kind is not None:
            await self.discard()
        return bool(suppressed)

    async def write(self, data: bytes | bytearray) -> None:
        view = memoryview(data)
        while view:
            if self._buffer is None:
                await self.budget.write.acquire()
                self._buffer = []
                self._buffered = 0
            piece = view[: self.stripe - self._buffered]
            # Pieces are kept as they come and joined once per stripe: a buffer grown
            # piece by piece is copied again each time it is reallocated.
            if isinstance(data, bytes) and len(piece) == len(data):
                self._buffer.append(data)
            else:
                self._buffer.append(bytes(piece))
            self._buffered += len(piece)
            view = view[len(piece) :]
            self.size += len(piece)
            if self._buffered == self.stripe:
                await self._flush()

    async def _flush(self) -> None:
        assert self._buffer is not None and self._nursery is not None
        pieces, self._buffer = self._buffer, None
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        index = self.stripes
        self.stripes += 1
        await self._in_flight.acquire()
        self._nursery.start_soon(self._write_stripe, index, data)

    async def _write_stripe(self, index: int, data: bytes) -> None:
        try:
            await self.backend.write_data(layout.stripe_name(self.head, index), data)
        finally:
            self._in_flight.release()
            self.budget.write.release()

    async def finish(self) -> int:
        """Write what is buffered and wait for every stripe; returns the size."""
        if self._buffer is not None:
            if self._buffer:
                await self._flush()
            else:
                self._buffer = None
                self.budget.write.release()
        assert self._nursery is not None
        # Wait for the writes in flight: they hold the in-flight slots.
        for _ in range(WRITES_IN_FLIGHT):
            await self._in_flight.acquire()
        for _ in range(WRITES_IN_FLIGHT):
            self._in_flight.release()
        return self.size

    async def discard(self) -> None:
        """Delete whatever stripes were written (an upload that failed half way)."""
        with trio.move_on_after(30) as scope:
            scope.shield = True
            for index in range(self.stripes):
                try:
                    await self.backend.delete(layout.stripe_name(self.head, index))
                except Exception as exc:  # cleanup is best effort; GC sweeps the rest
                    log.warning("could not delete %s: %s", self.head, exc)
                    return


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    name: str  # the cluster object
    offset: int  # within it
    length: int


def plan_striped(head: str, size: int, stripe: int, start: int, end: int) -> list[Segment]:
    """Segments covering bytes [start, end) of a striped object of ``size`` bytes."""
    end = min(end, size)
    segments = []
    position = start
    while position < end:
        index = position // stripe
        within = position - index * stripe
        length = min(stripe - within, end - position)
        segments.append(Segment(layout.stripe_name(head, index), within, length))
        position += length
    return segments


def plan_parts(parts: list[Part], start: int, end: int, stripe: int = STRIPE_SIZE) -> list[Segment]:
    """Segments covering bytes [start, end) of a multipart object with these parts."""
    segments: list[Segment] = []
    base = 0
    for part in parts:
        lo, hi = max(start, base), min(end, base + part.size)
        if lo < hi:
            segments.extend(plan_striped(part.head, part.size, stripe, lo - base, hi - base))
        base += part.size
        if base >= end:
            break
    return segments


async def load_manifest(backend: Backend, entry: Entry) -> list[Part]:
    assert entry.head is not None and entry.parts
    raw = await backend.read_data(entry.head, 0, entry.manifest_size)
    if len(raw) != entry.manifest_size:
        raise DataLost(f"manifest of {entry.head} is short")
    return layout.unpack_manifest(raw)


async def plan(backend: Backend, entry: Entry, start: int, end: int) -> list[Segment]:
    """The segments of bytes [start, end) of the object an entry describes."""
    if entry.head is None or start >= end:
        return []
    if entry.parts:
        return plan_parts(await load_manifest(backend, entry), start, end)
    return plan_striped(entry.head, entry.size, entry.stripe, start, end)


def inline_bytes(entry: Entry, start: int, end: int) -> bytes:
    """Bytes [start, end) of an object kept in the index."""
    if entry.data is None or len(entry.data) != entry.size:
        raise DataLost("an inline object's bytes are missing or short")
    return entry.data[start:end]


async def read_first(backend: Backend, segments: list[Segment]) -> list[bytes | bytearray]:
    """The first segment, read before answering: a Gone here means "look again"."""
    if not segments:
        return []
    first = segments[0]
    data = await backend.read_extents(first.name, first.offset, first.length)
    if sum(len(extent) for extent in data) != first.length:
        raise DataLost(f"{first.name} is shorter than its entry says")
    return data


class _Fetch:
    """One segment being read by a task of the gateway's nursery, holding a read token."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: list[bytes | bytearray] = []
        self.error: BaseException | None = None
        self.scope = trio.CancelScope()

    async def run(self, backend: Backend, segment: Segment) -> None:
        with self.scope:
            try:
                self.data = await backend.read_extents(segment.name, segment.offset, segment.length)
            except Gone:
                self.data = []
            except Exception as exc:
                self.error = exc
        self.done.set()


async def stream_segments(
    backend: Backend,
    segments: list[Segment],
    budget: Budget,
    nursery: trio.Nursery,
    first: list[bytes | bytearray] | None = None,
) -> AsyncGenerator[bytes | bytearray, None]:
    """Yield the bytes of ``segments`` in order, as the extents they were read in, reading
    one segment ahead when a token is free.

    The reads run in ``nursery`` (the gateway's), not in this generator, which only
    waits for them: a generator must not hold a nursery open across its yields."""
    fetches: dict[int, _Fetch] = {}

    def start(i: int) -> None:
        fetch = _Fetch()
        fetches[i] = fetch
        nursery.start_soon(fetch.run, backend, segments[i])

    try:
        for i, segment in enumerate(segments):
            if i == 0 and first is not None:
                data = first
            else:
                if i not in fetches:
                    await budget.read.acquire()
                    start(i)
                if i + 1 < len(segments) and i + 1 not in fetches:
                    try:
                        budget.read.acquire_nowait()
                    except trio.WouldBlock:
                        pass
                    else:
                        start(i + 1)
                fetch = fetches[i]
                await fetch.done.wait()
                del fetches[i]
                budget.read.release()
                if fetch.error is not None:
                    raise fetch.error
                data = fetch.data
            if sum(len(extent) for extent in data) != segment.length:
                raise DataLost(f"{segment.name} is missing or short")
            for extent in data:
                yield extent
    finally:
        for fetch in fetches.values():
            fetch.scope.cancel()
            budget.read.release()
