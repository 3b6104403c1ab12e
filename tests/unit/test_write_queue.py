"""The write queue: order of completions, and barriers."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import pytest
import trio

from store.errors import Code
from store.osd.objectstore import ObjectStore
from store.osd.ops import Cond, WriteFull
from store.osd.txns import PrimaryTxn, TxnResult
from store.osd.write_queue import Callback, ReleasedWritesLost, WriteQueue


async def test_completions_run_in_order_and_a_barrier_waits_for_earlier_writes(
    tmp_path: Path,
) -> None:
    store = ObjectStore(str(tmp_path))
    queue = WriteQueue(store, max_batch=3)
    seen: list[int] = []

    def note(result: TxnResult) -> None:
        seen.append(result.version[1])

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            for i in range(10):
                txn = PrimaryTxn(1, 0, f"o{i}", [WriteFull(b"x")], None, 1, f"c:{i}")
                queue.submit(txn, note)
            barrier = queue.barrier()
            result = await barrier.wait()
            assert result.code == Code.OK
            # Everything submitted before the barrier is on disk when it completes.
            assert seen == list(range(1, 11))
            assert store.pg_info(1, 0).last_version == (1, 10)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def failing_flush() -> None:
    raise OSError(errno.EIO, "I/O error")


def _txn(i: int, *, must_exist: bool = False) -> PrimaryTxn:
    cond = Cond(exists=True) if must_exist else None
    return PrimaryTxn(1, 0, f"o{i}", [WriteFull(b"x")], cond, 1, f"c:{i}")


async def test_executed_callbacks_run_in_order_before_the_batch_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(str(tmp_path))
    queue = WriteQueue(store, max_batch=4)
    events: list[tuple[str, int, int]] = []
    committed_when_released: dict[int, int] = {}
    # The flush waits until the batch's writes were released: they must be, while it runs.
    released = threading.Event()
    flushes_saw_release: list[bool] = []
    flush = store.space.sync_data

    def flush_after_release() -> None:
        flushes_saw_release.append(released.wait(timeout=10))
        released.clear()
        flush()

    monkeypatch.setattr(store.space, "sync_data", flush_after_release)

    def executed(i: int) -> Callback:
        def note(result: TxnResult) -> None:
            committed_when_released[i] = store.pg_info(1, 0).last_version[1]
            events.append(("executed", i, result.version[1]))
            released.set()

        return note

    def done(i: int) -> Callback:
        return lambda result: events.append(("done", i, result.version[1]))

    try:
        async with trio.open_nursery() as nursery:
            # Queued before the queue runs: one batch of four, then one of two.
            for i in range(6):
                # The third's condition fails: it is not released, only done (rolled back).
                queue.submit(_txn(i, must_exist=i == 2), done(i), executed(i))
            nursery.start_soon(queue.run)
            await queue.barrier().wait()
            nursery.cancel_scope.cancel()
    finally:
        store.close()
    kinds = [(kind, i) for kind, i, _ in events]
    assert kinds == [
        ("executed", 0),
        ("executed", 1),
        ("executed", 3),
        ("done", 0),
        ("done", 1),
        ("done", 2),
        ("done", 3),
        ("executed", 4),
        ("executed", 5),
        ("done", 4),
        ("done", 5),
    ]
    versions = {i: v for kind, i, v in events if kind == "executed"}
    assert versions == {0: 1, 1: 2, 3: 3, 4: 4, 5: 5}
    # Released during the flush, before the commit: the reader did not see them yet.
    assert flushes_saw_release == [True, True]
    assert committed_when_released == {0: 0, 1: 0, 3: 0, 4: 3, 5: 3}


async def test_a_batch_that_fails_after_releasing_writes_stops_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(str(tmp_path))
    queue = WriteQueue(store)
    released: list[int] = []
    done: list[TxnResult] = []

    try:
        queue.submit(_txn(0), done.append, lambda r: released.append(r.version[1]))
        monkeypatch.setattr(store.space, "sync_data", failing_flush)
        with pytest.RaisesGroup(ReleasedWritesLost, allow_unwrapped=True):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(queue.run)
        # Released to the replicas, never durable here, never answered as done.
        assert released == [1] and done == []
        assert store.pg_info(1, 0).last_version == (0, 0)
    finally:
        store.close()


async def test_a_failed_batch_without_released_writes_reports_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(str(tmp_path))
    queue = WriteQueue(store)

    monkeypatch.setattr(store.space, "sync_data", failing_flush)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            result = await queue.submit(_txn(0)).wait()
            assert result.code == Code.EIO and "storage error" in result.message
            monkeypatch.undo()
            assert (await queue.submit(_txn(1)).wait()).code == Code.OK
            nursery.cancel_scope.cancel()
    finally:
        store.close()


async def test_every_batch_is_applied_by_one_thread_that_stops_with_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(str(tmp_path))
    queue = WriteQueue(store, max_batch=2)
    threads: set[threading.Thread] = set()
    apply_batch = store.apply_batch

    def spy(*args: object) -> list[TxnResult]:
        threads.add(threading.current_thread())
        return apply_batch(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "apply_batch", spy)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            for i in range(6):
                await queue.submit(_txn(i)).wait()
            nursery.cancel_scope.cancel()
        [writer] = threads
        assert writer is not threading.current_thread()
        writer.join(timeout=5)
        assert not writer.is_alive()
    finally:
        store.close()


async def test_a_cancelled_queue_waits_for_the_batch_under_way(tmp_path: Path) -> None:
    # A batch handed to the thread runs to its end: the queue's task, cancelled meanwhile,
    # returns only after it, and the batch's writes are on disk.
    store = ObjectStore(str(tmp_path))
    queue = WriteQueue(store)
    entered = threading.Event()
    finished: list[bool] = []
    apply_batch = store.apply_batch

    def slow(*args: object) -> list[TxnResult]:
        entered.set()
        time.sleep(0.3)  # still under way when the queue is cancelled
        results = apply_batch(*args)  # type: ignore[arg-type]
        finished.append(True)
        return results

    store.apply_batch = slow  # type: ignore[method-assign]
    try:
        queue.submit(_txn(0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.run)
            await trio.to_thread.run_sync(entered.wait)
            nursery.cancel_scope.cancel()
        assert finished == [True]
        assert store.pg_info(1, 0).last_version == (1, 1)
    finally:
        store.close()
