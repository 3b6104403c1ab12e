"""Block checksums computed once on the primary and carried to the replicas."""

from __future__ import annotations

import os
import sqlite3
from array import array
from pathlib import Path

import pytest

from store.errors import Code
from store.osd.blockmap import BLOCK_INDEX_BITS, CHUNK_BLOCKS
from store.osd.blocksums import (
    SUMS_MIN_BLOCKS,
    attach_sums_untrusted,
    block_checksum,
    block_checksums,
    sums_to_wire,
    whole_blocks,
    with_sums,
)
from store.osd.objectstore import ObjectStore
from store.osd.ops import InvalidRequest, Op, Read, SetXattr, Write, WriteFull
from tests.unit.objectstore_support import BS, POOL, block_rows, ok, primary, read_all, replica

LARGE = (SUMS_MIN_BLOCKS + 3) * BS


def test_whole_blocks_of_aligned_and_unaligned_writes() -> None:
    assert whole_blocks(0, 4 * BS, BS) == (0, 4)
    assert whole_blocks(100, 4 * BS, BS) == (1, 3)  # the first and last are partial
    assert whole_blocks(BS, BS - 1, BS) == (1, 0)
    assert whole_blocks(10, 20, BS) == (1, 0)


def test_large_writes_get_the_checksums_of_the_blocks_they_cover_whole() -> None:
    data = os.urandom(LARGE + 200)
    ops: list[Op] = [SetXattr("k", b"v"), Write(100, data), Write(0, data[:BS]), WriteFull(data)]
    summed = with_sums(ops, BS)
    assert ops[1].sums is None  # type: ignore[union-attr]  # the input is left alone
    assert summed[0] is ops[0] and summed[2] is ops[2]  # small or dataless: as they were
    # At offset 100 the first whole block starts at byte BS - 100 of the data.
    first, count = whole_blocks(100, len(data), BS)
    middle = data[first * BS - 100 : first * BS - 100 + count * BS]
    assert summed[1].sums == block_checksums(middle, BS)  # type: ignore[union-attr]
    assert summed[1] == ops[1]  # equal as operations: the same write
    full = summed[3].sums  # type: ignore[union-attr]
    assert full is not None and len(full) == len(data) // BS
    assert full[0] == block_checksum(data[:BS])


def test_checksums_travel_and_come_back_as_they_were() -> None:
    data = os.urandom(LARGE)
    summed = with_sums([SetXattr("k", b"v"), WriteFull(data)], BS)
    wire = sums_to_wire(summed, BS)
    assert [entry[:2] for entry in wire] == [[1, BS]]
    received = attach_sums_untrusted([SetXattr("k", b"v"), WriteFull(data)], wire, BS)
    assert received[1].sums == summed[1].sums  # type: ignore[union-attr]
    assert attach_sums_untrusted(summed, None, BS) is summed


def test_checksums_for_another_block_size_are_ignored() -> None:
    data = os.urandom(LARGE)
    wire = sums_to_wire(with_sums([WriteFull(data)], BS), BS)
    [op] = attach_sums_untrusted([WriteFull(data)], wire, 2 * BS)
    assert isinstance(op, WriteFull) and op.sums is None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"0": 1}, "must be an array"),
        ([[0, BS]], r"\[op index, block size, bytes\]"),
        ([[0, BS, "text"]], r"\[op index, block size, bytes\]"),
        ([[True, BS, b""]], r"\[op index, block size, bytes\]"),
        ([[2, BS, bytes(8 * (LARGE // BS))]], "operation 2 of 2"),
        ([[-1, BS, bytes(8 * (LARGE // BS))]], "operation -1 of 2"),
        ([[0, BS, bytes(8)]], "writes no data"),
        ([[1, BS, bytes(8 * (LARGE // BS) - 8)]], "covers 19 blocks whole"),
        ([[1, BS, bytes(8 * (LARGE // BS) + 1)]], "covers 19 blocks whole"),
    ],
)
def test_malformed_checksums_are_refused(raw: object, why: str) -> None:
    ops: list[Op] = [SetXattr("k", b"v"), WriteFull(bytes(LARGE))]
    with pytest.raises(InvalidRequest, match=why):
        attach_sums_untrusted(ops, raw, BS)


def test_a_replica_stores_the_checksums_it_was_given(store: ObjectStore) -> None:
    data = os.urandom(LARGE)
    [op] = with_sums([WriteFull(data)], BS)
    assert isinstance(op, WriteFull) and op.sums is not None
    ok(replica(store, "given", (1, 1), op))
    assert read_all(store, "given") == data
    # Checksums that do not match the bytes are stored as given (nothing hashes again),
    # and the read that finds them out fails rather than serving the block.
    bad = array("q", op.sums)
    bad[5] ^= 1
    ok(replica(store, "wrong", (1, 2), WriteFull(data, bad)))
    assert ok(store.execute_read(POOL, "wrong", [Read(0, 5 * BS)])).results == [data[: 5 * BS]]
    result = store.execute_read(POOL, "wrong", [Read(5 * BS, BS)])
    assert result.code == Code.EIO and "block 5" in result.message


def test_zero_blocks_among_carried_checksums_become_holes(store: ObjectStore) -> None:
    data = bytearray(os.urandom(LARGE))
    data[2 * BS : 4 * BS] = bytes(2 * BS)
    data[-BS:] = bytes(BS)
    [op] = with_sums([Write(0, bytes(data))], BS)
    ok(primary(store, "holes", op))
    count = LARGE // BS
    assert block_rows(store, "holes") == [i for i in range(count) if i not in (2, 3, count - 1)]
    assert read_all(store, "holes") == data


def stored_sums(store: ObjectStore) -> dict[int, int]:
    """Block index -> the checksum in the block map, for every block with a slot."""
    with sqlite3.connect(store.path) as db:
        rows = db.execute("SELECT id, map FROM blockmap ORDER BY id").fetchall()
    sums = {}
    for row_id, raw in rows:
        entries = array("q")
        entries.frombytes(raw)
        for j in range(len(entries) // 2):
            if entries[2 * j] >= 0:
                index = (row_id & ((1 << BLOCK_INDEX_BITS) - 1)) * CHUNK_BLOCKS + j
                sums[index] = entries[2 * j + 1]
    return sums


def test_a_written_object_reads_the_same_on_primary_and_replica(tmp_path: Path) -> None:
    data = os.urandom(3 * LARGE + 1234)
    ops = with_sums([Write(777, data)], BS)
    wire = sums_to_wire(ops, BS)
    one = ObjectStore(str(tmp_path / "one"))
    other = ObjectStore(str(tmp_path / "other"))
    try:
        result = ok(primary(one, "obj", *ops))
        received = attach_sums_untrusted([Write(777, data)], wire, BS)
        ok(replica(other, "obj", result.version, *received))
        assert read_all(one, "obj") == read_all(other, "obj") == bytes(777) + data
        # Every block's stored checksum is its content's, on both.
        assert stored_sums(one) == stored_sums(other)
        content = bytes(777) + data
        assert stored_sums(one) == {
            i: block_checksum(content[i * BS : (i + 1) * BS].ljust(BS, b"\0"))
            for i in range(-(-len(content) // BS))
        }
    finally:
        one.close()
        other.close()
