"""Reads the daemon answers at once may borrow the reading thread's buffer (no copy)."""

from __future__ import annotations

import os

from store.osd.blockspace import DIRECT_CHUNK, DIRECT_MIN
from store.osd.objectstore import ObjectStore
from store.osd.ops import Read, Stat, WriteFull
from tests.unit.objectstore_support import POOL, ok, primary

SIZE = 2 * DIRECT_MIN


def test_a_lone_large_read_borrows_and_the_next_read_reuses_the_buffer(
    store: ObjectStore,
) -> None:
    assert store.space.direct_reads  # the test directory takes O_DIRECT (not tmpfs)
    one, two = os.urandom(SIZE), os.urandom(SIZE)
    ok(primary(store, "one", WriteFull(one)))
    ok(primary(store, "two", WriteFull(two)))
    [first] = ok(store.execute_read(POOL, "one", [Read(0, SIZE)], borrow=True)).results
    assert isinstance(first, memoryview) and first == one
    [second] = ok(store.execute_read(POOL, "two", [Read(0, SIZE)], borrow=True)).results
    assert second == two
    assert first == two  # the same buffer: a borrowed result lives until the next read
    # A range inside the run is a view too; the caller's slice of the object, verified.
    [part] = ok(store.execute_read(POOL, "one", [Read(100, SIZE - 200)], borrow=True)).results
    assert part == one[100 : SIZE - 100]


def test_reads_that_are_kept_copy(store: ObjectStore) -> None:
    data = os.urandom(SIZE)
    ok(primary(store, "obj", WriteFull(data)))
    [kept] = ok(store.execute_read(POOL, "obj", [Read(0, SIZE)])).results
    assert isinstance(kept, bytes) and kept == data
    # Two operations in one request: neither borrows, or the second would overwrite the first.
    results = ok(store.execute_read(POOL, "obj", [Read(0, SIZE), Stat()], borrow=True)).results
    assert isinstance(results[0], bytes) and results[0] == data
    assert store.object_state(POOL, "obj").data == data
    # Small reads are never direct, so never borrowed.
    [small] = ok(store.execute_read(POOL, "obj", [Read(0, 4096)], borrow=True)).results
    assert isinstance(small, bytes) and small == data[:4096]
    assert DIRECT_CHUNK >= SIZE
