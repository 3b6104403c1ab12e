"""The write queue: order of completions, and barriers."""

from __future__ import annotations

from pathlib import Path

import trio

from store.errors import Code
from store.osd.objectstore import ObjectStore
from store.osd.ops import WriteFull
from store.osd.txns import PrimaryTxn, TxnResult
from store.osd.write_queue import WriteQueue


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
