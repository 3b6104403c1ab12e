"""Group commit: every mutation of the object store goes through one queue.

Operations are taken from the queue in the order they were submitted, as many as are
waiting (up to ``max_batch``), and applied by ``ObjectStore.apply_batch`` in a worker thread:
one SQLite transaction, one fsync for the lot. Their completion callbacks then run on the
event loop *in submission order, synchronously, before anything else runs*. That order is
what replication builds on: the primary forwards a write to its replicas from inside the
callback, so writes leave in the order they were versioned.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from store.errors import Code
from store.osd.objectstore import ObjectStore
from store.osd.txns import TxnResult

log = logging.getLogger("store.osd")

Callback = Callable[[TxnResult], None]


class Completion:
    """A result to wait for; set by the queue."""

    __slots__ = ("event", "result")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.result: TxnResult | None = None

    async def wait(self) -> TxnResult:
        await self.event.wait()
        assert self.result is not None
        return self.result


class WriteQueue:
    def __init__(self, store: ObjectStore, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: deque[tuple[Any, Completion, Callback | None]] = deque()
        self._wakeup = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self.batches = 0
        self.applied = 0

    def barrier(self) -> Completion:
        """Completes once everything submitted before it is on disk."""
        return self.submit(None)

    def submit(self, txn: Any, on_done: Callback | None = None) -> Completion:
        completion = Completion()
        self._pending.append((txn, completion, on_done))
        self._wakeup.set()
        return completion

    async def run(self) -> None:
        barrier_done = TxnResult(Code.OK, [], (0, 0))
        while True:
            if not self._pending:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            count = min(len(self._pending), self.max_batch)
            batch = [self._pending.popleft() for _ in range(count)]
            txns = [txn for txn, _, _ in batch if txn is not None]
            results: list[TxnResult] = []
            if txns:
                try:
                    results = await trio.to_thread.run_sync(
                        self.store.apply_batch, txns, limiter=self._limiter, abandon_on_cancel=False
                    )
                except Exception:
                    log.exception("applying a batch of %d operations failed", len(txns))
                    failed = TxnResult(Code.EIO, [], (0, 0), "internal error writing to disk")
                    results = [failed] * len(txns)
            # Back on the event loop, between reads: slots the batch freed may be reused.
            self.store.release_freed()
            self.batches += 1
            self.applied += len(txns)
            done = iter(results)
            for txn, completion, on_done in batch:
                result = next(done) if txn is not None else barrier_done
                completion.result = result
                if on_done is not None:
                    try:
                        on_done(result)
                    except Exception:
                        log.exception("completion callback failed")
                completion.event.set()
