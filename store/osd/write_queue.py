"""Group commit: every mutation of the object store goes through one queue.

Operations are taken from the queue in the order they were submitted, as many as are
waiting (up to ``max_batch``), and applied by ``ObjectStore.apply_batch`` in the queue's
writer thread:
one SQLite transaction, one fsync for the lot. An operation may have two callbacks, each
run on the event loop *in submission order, synchronously, before anything else runs*:

- ``on_executed``, when the whole batch has run and is being flushed, for an operation
  that succeeded: its result is final unless the flush or the commit fails;
- ``on_done``, when the batch is committed (or has failed).

That order is what replication builds on: the primary forwards a write to its replicas
from its ``on_executed``, so writes leave in the order they were versioned, and the
replicas write while the primary flushes (store.osd.pg). A batch that fails after some
of its operations were released so is fatal (:class:`ReleasedWritesLost`): the replicas
may hold writes this disk does not, under versions it would give again. The daemon stops,
as Ceph's OSD does when a local write fails, and its PGs peer afresh elsewhere or when it
returns (it then takes those writes from the replicas).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import trio

from store.errors import Code, StoreError
from store.osd.objectstore import ObjectStore
from store.osd.txns import TxnResult

log = logging.getLogger("store.osd")

Callback = Callable[[TxnResult], None]
# An operation queued: the transaction, its completion, on_done, on_executed.
_Entry = tuple[Any, "Completion", Callback | None, Callback | None]


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


class ReleasedWritesLost(StoreError):
    """A batch failed after writes of it were released to ``on_executed``."""


class _Executed:
    """A batch's ``on_executed`` callbacks: called from the worker thread with the batch's
    results, they run once, in order, on the event loop."""

    def __init__(self, batch: list[_Entry], token: trio.lowlevel.TrioToken) -> None:
        self._batch = batch
        self._token = token
        self._fired = False
        self.released: list[int] = []  # indexes (among the batch's operations) released

    def __call__(self, results: list[TxnResult]) -> None:  # in the worker thread
        with suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self.fire, results)

    def fire(self, results: list[TxnResult]) -> None:
        """Run the callbacks of the operations that succeeded; only the first call does."""
        if self._fired:
            return
        self._fired = True
        index = 0
        for txn, _, _, on_executed in self._batch:
            if txn is None:
                continue
            result = results[index]
            if on_executed is not None and result.code == Code.OK:
                self.released.append(index)
                try:
                    on_executed(result)
                except Exception:
                    log.exception("execution callback failed")
            index += 1

    def lost(self, results: list[TxnResult]) -> list[TxnResult]:
        """The final results of released operations that did not commit."""
        return [results[i] for i in self.released if results[i].code != Code.OK]


class _Writer:
    """The one thread that applies batches, for as long as the queue runs.

    ``trio.to_thread.run_sync`` per batch cost some 124 µs of CPU (its limiter, a context
    copy, a job handed to a cached thread); a thread of our own waiting on a queue, 89 µs.
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._jobs: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread. Once handed over it runs to its end: a
        cancellation waits for it (as ``abandon_on_cancel=False``)."""
        done = trio.Event()
        box: list[tuple[Any, BaseException | None]] = []  # (result, exception raised)

        def settle(result: Any, error: BaseException | None) -> None:
            box.append((result, error))
            done.set()

        def job() -> None:
            result, error = None, None
            try:
                result = fn(*args)
            except BaseException as exc:
                error = exc
            with suppress(trio.RunFinishedError):
                self._token.run_sync_soon(settle, result, error)

        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        await trio.lowlevel.checkpoint_if_cancelled()
        result, error = box[0]
        if error is not None:
            raise error
        return result

    def stop(self) -> None:
        self._jobs.put(None)


class WriteQueue:
    def __init__(self, store: ObjectStore, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._pending: deque[_Entry] = deque()
        self._wakeup = trio.Event()
        self.batches = 0
        self.applied = 0

    def barrier(self) -> Completion:
        """Completes once everything submitted before it is on disk."""
        return self.submit(None)

    def submit(
        self, txn: Any, on_done: Callback | None = None, on_executed: Callback | None = None
    ) -> Completion:
        completion = Completion()
        self._pending.append((txn, completion, on_done, on_executed))
        self._wakeup.set()
        return completion

    async def run(self) -> None:
        writer = _Writer(trio.lowlevel.current_trio_token())
        try:
            await self._run(writer)
        finally:
            writer.stop()

    async def _run(self, writer: _Writer) -> None:
        barrier_done = TxnResult(Code.OK, [], (0, 0))
        while True:
            if not self._pending:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            count = min(len(self._pending), self.max_batch)
            batch = [self._pending.popleft() for _ in range(count)]
            txns = [entry[0] for entry in batch if entry[0] is not None]
            results: list[TxnResult] = []
            if txns:
                executed = None
                if any(entry[3] is not None for entry in batch):
                    executed = _Executed(batch, trio.lowlevel.current_trio_token())
                try:
                    results = await writer.run(self.store.apply_batch, txns, executed)
                except Exception:
                    log.exception("applying a batch of %d operations failed", len(txns))
                    failed = TxnResult(Code.EIO, [], (0, 0), "internal error writing to disk")
                    results = [failed] * len(txns)
                if executed is not None:
                    # Run already (queued by the thread before it returned), unless the
                    # batch failed before its end; then its errors release nothing.
                    executed.fire(results)
                    lost = executed.lost(results)
                    if lost:
                        log.critical(
                            "%d writes were forwarded to replicas but could not be made "
                            "durable here (%s): stopping",
                            len(lost),
                            lost[0].message or lost[0].code.name,
                        )
                        raise ReleasedWritesLost(f"a batch failed after release: {lost[0]}")
            # Back on the event loop, between reads: slots the batch freed may be reused.
            self.store.release_freed()
            self.batches += 1
            self.applied += len(txns)
            done = iter(results)
            for txn, completion, on_done, _ in batch:
                result = next(done) if txn is not None else barrier_done
                completion.result = result
                if on_done is not None:
                    try:
                        on_done(result)
                    except Exception:
                        log.exception("completion callback failed")
                completion.event.set()
