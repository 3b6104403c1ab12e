"""A body's digests computed beside the event loop, not on it.

Every byte of an upload goes through MD5 (the ETag), usually SHA-256 (a signed payload)
and often a CRC (``x-amz-checksum-*``): some 9 ms of CPU per 4 MiB here, which on the
event loop is time no other request is served — the one thread was a third of the
gateway's time during PUTs of 4 MiB while bodies waited unread in the kernel. hashlib and
zlib let go of the GIL while they hash a buffer of some kilobytes, so a worker thread
hashes a batch while the event loop goes on reading.

A :class:`DigestFeed` gathers a body's pieces and hands them to a thread in batches of
``batch`` bytes, one batch in flight at a time, so the digests see the bytes in order.
A body smaller than one batch is hashed on the event loop when it ends: a hop to a
thread costs more than hashing a few kilobytes.
"""

from __future__ import annotations

from typing import Any

import trio

from store.gateways.s3.checksums import BodyDigests

BATCH = 256 * 1024


class DigestFeed:
    """Feeds ``digests`` in order, hashing large batches in a worker thread."""

    def __init__(self, digests: BodyDigests, batch: int = BATCH) -> None:
        self.digests = digests
        self.batch = batch
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._in_flight: trio.Event | None = None
        self._outcome: Any = None  # the thread's outcome.Outcome (trio's own dependency)

    @property
    def idle(self) -> bool:
        """True when every byte given has been hashed."""
        return not self._pending and self._in_flight is None

    async def update(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_bytes += len(piece)
        if self._pending_bytes >= self.batch:
            await self._hand_off()

    async def flush(self) -> None:
        """Return when every byte given so far has been hashed."""
        if self._pending:
            if self._in_flight is None and self._pending_bytes < self.batch:
                self._hash(self._take())
            else:
                await self._hand_off()
        await self._wait()

    def _take(self) -> list[bytes]:
        pieces, self._pending, self._pending_bytes = self._pending, [], 0
        return pieces

    def _hash(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.digests.update(piece)

    async def _hand_off(self) -> None:
        await self._wait()
        pieces = self._take()
        done = self._in_flight = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def deliver(result: Any) -> None:
            # In the worker thread, once it has hashed the batch.
            self._outcome = result
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # the gateway stopped: nobody waits for these digests any more

        trio.lowlevel.start_thread_soon(lambda: self._hash(pieces), deliver, name="digests")

    async def _wait(self) -> None:
        if self._in_flight is None:
            return
        # Cancelled here, the batch still finishes in its thread; a later wait sees it.
        await self._in_flight.wait()
        self._in_flight = None
        result, self._outcome = self._outcome, None
        if result is not None:
            result.unwrap()
