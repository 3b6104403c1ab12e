"""The data file's slots: the allocator, copy-on-write and what a crash leaves."""

from __future__ import annotations

import errno
import mmap
import os
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.osd.blockspace import (
    DIRECT_CHUNK,
    DIRECT_MIN,
    IOV_MAX,
    BlockSpace,
    SlotAllocator,
    runs_of,
)
from store.osd.objectstore import ObjectStore
from store.osd.ops import Cond, Write
from store.osd.txns import PrimaryTxn
from store.wire.frames import _frame_buffer
from tests.unit.objectstore_support import POOL, ok, primary, read_all

BS = 4096


def slots_in(runs: list[tuple[int, int]]) -> set[int]:
    return {slot for start, count in runs for slot in range(start, start + count)}


def test_the_allocator_rebuilds_free_extents_from_used_slots() -> None:
    alloc = SlotAllocator(10, [0, 1, 4, 7])
    assert alloc.extents() == [(2, 2), (5, 2)]  # the free tail shrinks the file instead
    assert alloc.end == 8
    assert alloc.allocate(2) == [(2, 2)]
    assert alloc.allocate(3) == [(8, 3)]  # no hole is big enough: the end grows
    alloc.free([(2, 2), (8, 3)])
    assert alloc.extents() == [(2, 2), (5, 2)] and alloc.end == 8


def test_freeing_twice_or_outside_the_file_is_refused() -> None:
    alloc = SlotAllocator()
    alloc.allocate(4)
    alloc.free([(1, 1)])
    with pytest.raises(ValueError, match="already free"):
        alloc.free([(1, 1)])
    with pytest.raises(ValueError, match="outside"):
        alloc.free([(3, 5)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 20), st.integers(0, 1000)), max_size=60))
def test_the_allocator_never_hands_out_a_slot_twice(steps: list[tuple[bool, int, int]]) -> None:
    alloc = SlotAllocator()
    held: list[set[int]] = []
    for take, count, pick in steps:
        if take or not held:
            runs = alloc.allocate(count)
            got = slots_in(runs)
            assert len(got) == count
            assert all(not got & other for other in held)
            held.append(got)
        else:
            gone = held.pop(pick % len(held))
            alloc.free(runs_of(sorted(gone)))
        in_use = set().union(*held) if held else set()
        free = slots_in(alloc.extents())
        assert not free & in_use
        assert free | in_use == set(range(alloc.end))  # nothing is lost either


def test_an_overwrite_keeps_the_old_slot_until_the_batch_is_released(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"a" * BS)))
    store.release_freed()
    assert store.space.stats()["data_slots"] == 1
    ok(primary(store, "obj", Write(0, b"b" * BS)))
    # The first slot is no longer referenced but may still be under a reader: held.
    assert store.space.stats()["data_slots"] == 2
    store.release_freed()
    assert store.space.stats()["data_slots"] == 1
    ok(primary(store, "obj", Write(0, b"c" * BS)))
    store.release_freed()
    assert store.space.stats()["data_slots"] == 1
    assert store.space.stats()["data_span_bytes"] <= 2 * BS  # freed slots were reused
    assert read_all(store, "obj") == b"c" * BS


def test_a_rolled_back_transaction_returns_its_slots_at_once(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"a" * BS)))
    failing = PrimaryTxn(POOL, 0, "obj", [Write(0, b"z" * 8 * BS)], Cond(False, None), 1, "r9")
    [result] = store.apply_batch([failing])
    assert result.code.name == "ECANCELED"
    assert store.space.stats()["data_slots"] == 1
    assert read_all(store, "obj") == b"a" * BS


def test_blocks_written_but_never_committed_are_free_after_a_restart(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    ok(primary(store, "obj", Write(0, b"a" * 2 * BS)))
    # A crash after the data reached the file but before the commit: the slots are
    # written but nothing references them.
    store.space.write_blocks([b"x" * BS] * 5)
    store.close()
    store = ObjectStore(str(tmp_path))
    stats = store.space.stats()
    assert stats["data_slots"] == 2
    assert read_all(store, "obj") == b"a" * 2 * BS
    ok(primary(store, "new", Write(0, b"n" * 3 * BS)))
    assert store.space.stats()["data_span_bytes"] == 5 * BS  # their slots were reused
    assert read_all(store, "new") == b"n" * 3 * BS
    store.close()


def _patterned(count: int, seed: int) -> list[bytes]:
    return [bytes([(seed + i) % 251]) * BS for i in range(count)]


@pytest.mark.parametrize("direct", [True, False])
def test_direct_and_buffered_writes_store_the_same_bytes(tmp_path: Path, direct: bool) -> None:
    space = BlockSpace(str(tmp_path / "blocks.dat"), BS, [], direct=direct)
    try:
        # This test directory is on a file system that takes O_DIRECT (not tmpfs).
        assert space.direct is direct
        # More blocks than one aligned buffer and than one pwritev call take.
        blocks = _patterned(DIRECT_CHUNK // BS + IOV_MAX + 3, 7)
        slots = space.write_blocks(blocks)
        assert slots == list(range(len(blocks)))
        assert space.read_run(0, len(blocks)) == b"".join(blocks)
        # Cached pages of a slot that is written again are not served stale.
        again = _patterned(2, 99)
        space._write_run(again, 1, direct)
        assert space.read_run(0, 4) == blocks[0] + again[0] + again[1] + blocks[3]
    finally:
        space.close()


@pytest.mark.parametrize("direct", [True, False])
def test_large_reads_see_every_write_however_it_was_made(tmp_path: Path, direct: bool) -> None:
    space = BlockSpace(str(tmp_path / "blocks.dat"), BS, [], direct=direct)
    try:
        assert space.direct_reads is direct
        big = DIRECT_MIN // BS * 3
        blocks = _patterned(big, 11)
        space.write_blocks([b"".join(blocks)])  # direct where it may be
        # Blocks written again through the page cache, not yet written back: a direct
        # read of the range must return them, not what the device had.
        again = _patterned(3, 77)
        space._write_run(again, 5, direct=False)
        blocks[5:8] = again
        assert space.read_run(0, big) == b"".join(blocks)
        # A read running past the end of the file is short, as a buffered one is.
        assert space.read_run(big - 2, DIRECT_MIN // BS) == b"".join(blocks[-2:])
        assert space.read_run(big, DIRECT_MIN // BS) == b""
    finally:
        space.close()


def test_threads_reading_at_once_each_get_their_own_bytes(tmp_path: Path) -> None:
    space = BlockSpace(str(tmp_path / "blocks.dat"), BS, [])
    try:
        run = DIRECT_MIN // BS
        contents = [b"".join(_patterned(run, seed)) for seed in range(4)]
        for data in contents:
            space.write_blocks([data])
        wrong: list[int] = []

        def reader(which: int) -> None:
            for _ in range(50):
                if space.read_run(which * run, run) != contents[which]:
                    wrong.append(which)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert space.direct_reads
        assert wrong == []
    finally:
        space.close()


def test_a_file_system_refusing_direct_reads_falls_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = BlockSpace(str(tmp_path / "blocks.dat"), BS, [])
    try:
        data = b"".join(_patterned(DIRECT_MIN // BS, 5))
        space.write_blocks([data])
        assert space.direct_reads

        def refuse(fd: int, buffers: object, offset: int) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")

        monkeypatch.setattr(os, "preadv", refuse)
        assert space.read_run(0, DIRECT_MIN // BS) == data
        assert not space.direct_reads
        assert space.direct  # writes are another matter
    finally:
        space.close()


def test_a_file_system_refusing_direct_writes_falls_back_to_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = BlockSpace(str(tmp_path / "blocks.dat"), BS, [])
    try:
        assert space.direct

        def refuse(fd: int, data: object, offset: int) -> int:
            raise OSError(errno.EINVAL, "Invalid argument")

        monkeypatch.setattr(os, "pwrite", refuse)
        small = _patterned(5, 1)
        assert space.write_blocks(small) == [0, 1, 2, 3, 4]  # small: buffered anyway
        assert space.direct
        big = _patterned(DIRECT_MIN // BS, 2)
        assert space.write_blocks(big) == list(range(5, 5 + len(big)))
        assert not space.direct
        assert space.read_run(0, 5 + len(big)) == b"".join(small + big)
    finally:
        space.close()


@pytest.mark.parametrize("direct", [True, False])
def test_runs_of_several_blocks_land_block_by_block(tmp_path: Path, direct: bool) -> None:
    path = tmp_path / "blocks.dat"
    path.write_bytes(bytes(13 * BS))
    # Used slots leave free holes of 1, 2, 3 and 2 slots inside the file.
    space = BlockSpace(str(path), BS, [1, 4, 5, 9, 12], direct=direct)
    try:
        pair = _patterned(2, 50)
        assert space.write_blocks([b"".join(pair)]) == [2, 3]  # the first hole that fits
        blocks = _patterned(DIRECT_CHUNK // BS + 40, 3)
        # One block, then a long run, then a run of two: as the object store passes a
        # write's edges and its aligned middle. Too big for a hole: the end of the file.
        runs = [blocks[0], b"".join(blocks[1:-2]), memoryview(b"".join(blocks[-2:]))]
        slots = space.write_blocks(runs)
        assert slots == list(range(13, 13 + len(blocks)))
        assert space.read_run(2, 2) == b"".join(pair)
        for slot, block in zip(slots, blocks, strict=True):
            assert space.read_run(slot, 1) == block
    finally:
        space.close()


def test_a_run_must_be_whole_blocks(tmp_path: Path) -> None:
    space = BlockSpace(str(tmp_path / "blocks.dat"), BS, [])
    try:
        with pytest.raises(ValueError):
            space.write_blocks([b"x" * (BS + 1)])
        with pytest.raises(ValueError):
            space.write_blocks([b""])
        assert space.write_blocks([]) == []
    finally:
        space.close()


def test_a_large_unaligned_write_with_zero_blocks_keeps_holes(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path))
    try:
        data = bytearray(os.urandom(300 * BS))
        data[5 * BS : 8 * BS] = bytes(3 * BS)  # three whole zero blocks once placed
        offset = BS - 100
        ok(primary(store, "holes", Write(offset, bytes(data))))
        assert read_all(store, "holes") == bytes(offset) + bytes(data)
        # 301 blocks touched; the three zero ones (5..7 of the data, shifted by the
        # offset: the blocks from 6 hold zeros only where data is zero) are not stored.
        touched = -(-(offset + len(data)) // BS)
        zero_blocks = sum(
            1
            for i in range(touched)
            if (bytes(offset) + bytes(data))[i * BS : (i + 1) * BS] == bytes(BS)
        )
        assert zero_blocks == 2
        assert store.space.stats()["data_slots"] == touched - zero_blocks
    finally:
        store.close()


@pytest.mark.parametrize("aligned", [True, False])
def test_a_frame_buffer_on_a_page_boundary_is_written_without_a_copy(
    tmp_path: Path, aligned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A replica receives a large forward in a buffer whose data starts on a page
    # boundary (store.wire.frames); anywhere else, the aligned buffer's copy is used.
    data = b"".join(_patterned(DIRECT_MIN // BS, 3))
    tail_start = 100
    frame = _frame_buffer(tail_start + len(data) + (0 if aligned else 1), tail_start)
    at = tail_start + (0 if aligned else 1)
    frame[at:] = data
    written_from: list[type] = []
    pwrite = os.pwrite

    def recording(fd: int, buffer: memoryview, offset: int) -> int:
        written_from.append(type(buffer.obj))
        return pwrite(fd, buffer, offset)

    monkeypatch.setattr(os, "pwrite", recording)
    space = BlockSpace(str(tmp_path / "blocks.dat"), BS, [])
    try:
        assert space.direct
        assert space.write_blocks([frame[at:].toreadonly()]) == list(range(len(data) // BS))
        assert space.read_run(0, len(data) // BS) == data
        assert space.direct  # a misaligned buffer is no sign of a file system without it
        if aligned:
            assert written_from == [bytearray]  # the frame's own bytes, once
        else:  # refused (EINVAL), then copied to the aligned buffer
            assert written_from == [bytearray, mmap.mmap]
    finally:
        space.close()


@given(st.lists(st.integers(0, 300), max_size=200))
def test_runs_of_matches_slot_by_slot(slots: list[int]) -> None:
    expected: list[tuple[int, int]] = []
    for slot in sorted(slots):  # a slot given twice stays a run of its own
        if expected and expected[-1][0] + expected[-1][1] == slot:
            expected[-1] = (expected[-1][0], expected[-1][1] + 1)
        else:
            expected.append((slot, 1))
    assert runs_of(slots) == expected
    assert runs_of(list(range(7, 7 + len(slots)))) == ([(7, len(slots))] if slots else [])
