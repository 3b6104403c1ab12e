"""The daemon's object store: data, attributes, omap, conditions, damage."""

from __future__ import annotations

import errno
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.errors import ChecksumError, Code, ConfigError
from store.osd.objectstore import LogEntry, ObjectStore, PgInfo
from store.osd.ops import (
    MAX_OBJECT_SIZE,
    Cond,
    Create,
    Delete,
    GetXattrs,
    OmapClear,
    OmapGet,
    OmapList,
    OmapRm,
    OmapSet,
    Op,
    Read,
    RmXattr,
    SetXattr,
    Staged,
    Stat,
    Truncate,
    Write,
    WriteFull,
    Zero,
)
from store.osd.txns import (
    PrimaryTxn,
)
from tests.unit.objectstore_support import (
    BS,
    POOL,
    block_rows,
    corrupt_block,
    ok,
    primary,
    read_all,
    stored_blocks,
)

# --- data -----------------------------------------------------------------------------


def test_write_then_read_stat_and_version(store: ObjectStore) -> None:
    result = ok(primary(store, "obj", Write(0, b"hello"), Stat(), epoch=7))
    assert result.version == (7, 1)
    assert result.results[0] is None
    assert result.results[1] == {"size": 5, "version": [0, 0], "mtime": 0.0}
    read = ok(store.execute_read(POOL, "obj", [Read(1, 3), Stat()]))
    assert read.results[0] == b"ell"
    stat = read.results[1]
    assert isinstance(stat, dict)
    assert stat["size"] == 5 and stat["version"] == [7, 1] and stat["mtime"] > 0
    assert read.version == (7, 1)
    meta = store.stat(POOL, "obj")
    assert meta is not None and (meta.size, meta.version) == (5, (7, 1))


def test_one_write_of_more_blocks_than_one_pwritev_takes(store: ObjectStore) -> None:
    # A staged write commits up to 32 MiB at once: thousands of blocks, more buffers than
    # one pwritev call accepts (IOV_MAX).
    data = os.urandom(2500 * BS + 123)
    ok(primary(store, "big", Write(BS, data)))
    assert ok(store.execute_read(POOL, "big", [Read(BS, len(data))])).results == [data]
    ok(primary(store, "big", WriteFull(data[::-1])))
    assert ok(store.execute_read(POOL, "big", [Read(0, len(data))])).results == [data[::-1]]


def test_a_staged_write_whose_stage_is_gone_applies_only_if_it_was_logged(
    store: ObjectStore,
) -> None:
    # The front leaves a `staged` operation in place when it finds no stage for it.
    ok(primary(store, "obj", Write(0, b"committed"), reqid="c.1:5"))
    again = primary(store, "obj", Staged(9, 0, 9, False), reqid="c.1:5")
    assert again.code == Code.OK and again.version == (1, 1)  # a repeat: already applied
    lost = primary(store, "obj", Staged(9, 0, 9, False), reqid="c.1:6")
    assert lost.code == Code.ENOTSTAGED and "stage the data again" in lost.message
    assert read_all(store, "obj") == b"committed"
    assert store.pg_info(POOL, 0).last_version == (1, 1)


def test_reads_past_the_end_are_short_or_empty(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"0123456789")))
    results = ok(store.execute_read(POOL, "obj", [Read(8, 100), Read(10, 5), Read(99, 1)]))
    assert results.results == [b"89", b"", b""]


def test_absent_objects(store: ObjectStore) -> None:
    for op in (Read(0, 1), Stat(), GetXattrs(), OmapGet(("k",)), OmapList(None, 10, "")):
        result = store.execute_read(POOL, "nothing", [op])
        assert result.code == Code.ENOENT, op
        assert "nothing" in result.message
        assert primary(store, "nothing", op).code == Code.ENOENT
    assert store.stat(POOL, "nothing") is None
    assert store.execute_read(POOL, "nothing", [Write(0, b"x")]).code == Code.EINVAL


def test_writes_are_block_aligned_and_unaligned(store: ObjectStore) -> None:
    data = bytes(range(256)) * 64  # 16 KiB, four blocks
    ok(primary(store, "obj", Write(0, data)))
    ok(primary(store, "obj", Write(BS - 3, b"ABCDEF")))  # straddles blocks 0 and 1
    expected = bytearray(data)
    expected[BS - 3 : BS + 3] = b"ABCDEF"
    ok(primary(store, "obj", Write(len(data) + 100, b"tail")))  # a gap, then a short block
    expected += bytes(100) + b"tail"
    assert read_all(store, "obj") == expected


def test_unwritten_ranges_are_holes(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(10 * BS + 5, b"far")))
    assert read_all(store, "obj") == bytes(10 * BS + 5) + b"far"
    assert block_rows(store, "obj") == [10]
    ok(primary(store, "obj", Write(2 * BS, bytes(BS))))  # zeros take no space either
    assert block_rows(store, "obj") == [10]


def test_write_full_replaces_data_and_keeps_attributes(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"x" * 3 * BS), SetXattr("a", b"1"), OmapSet({"k": b"v"})))
    ok(primary(store, "obj", WriteFull(b"short")))
    assert read_all(store, "obj") == b"short"
    assert block_rows(store, "obj") == [0]
    result = ok(store.execute_read(POOL, "obj", [GetXattrs(), OmapGet(("k",))]))
    assert result.results == [{"a": b"1"}, {"k": b"v"}]
    ok(primary(store, "obj", WriteFull(b"")))
    assert read_all(store, "obj") == b""
    assert block_rows(store, "obj") == []


def test_truncate_down_and_up(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"\xff" * 3 * BS)))
    ok(primary(store, "obj", Truncate(BS + 10)))
    assert read_all(store, "obj") == b"\xff" * (BS + 10)
    assert block_rows(store, "obj") == [0, 1]
    ok(primary(store, "obj", Truncate(3 * BS)))  # the cut bytes must not come back
    assert read_all(store, "obj") == b"\xff" * (BS + 10) + bytes(2 * BS - 10)
    ok(primary(store, "obj", Truncate(0)))
    assert read_all(store, "obj") == b""
    assert block_rows(store, "obj") == []
    ok(primary(store, "new", Truncate(100)))  # creates a sparse object
    assert read_all(store, "new") == bytes(100)


def test_zero_reads_as_zeros_and_frees_whole_blocks(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"\x01" * 5 * BS)))
    ok(primary(store, "obj", Zero(BS - 1, 3 * BS + 2)))
    expected = b"\x01" * (BS - 1) + bytes(3 * BS + 2) + b"\x01" * (BS - 1)
    assert read_all(store, "obj") == expected
    assert block_rows(store, "obj") == [0, 4]
    ok(primary(store, "obj", Zero(4 * BS, 10 * BS)))  # past the end: size stays
    assert read_all(store, "obj") == expected[: 4 * BS] + bytes(BS)
    assert block_rows(store, "obj") == [0]
    ok(primary(store, "obj", Zero(0, 1)))
    assert read_all(store, "obj")[:BS] == bytes(1) + b"\x01" * (BS - 2) + bytes(1)
    assert store.stat(POOL, "obj") is not None
    assert store.stat(POOL, "obj").size == 5 * BS  # type: ignore[union-attr]


def test_objects_have_a_size_limit(store: ObjectStore) -> None:
    result = primary(store, "obj", Write(MAX_OBJECT_SIZE - 1, b"ab"))
    assert result.code == Code.EFBIG and "obj" in result.message
    assert primary(store, "obj", Truncate(MAX_OBJECT_SIZE + 1)).code == Code.EFBIG
    assert store.stat(POOL, "obj") is None
    ok(primary(store, "obj", Truncate(MAX_OBJECT_SIZE), Write(MAX_OBJECT_SIZE - 1, b"z")))
    result = ok(store.execute_read(POOL, "obj", [Read(MAX_OBJECT_SIZE - 2, 10)]))
    assert result.results == [b"\x00z"]


# --- create, delete, attributes, omap --------------------------------------------------


def test_create(store: ObjectStore) -> None:
    assert ok(primary(store, "obj", Create(True))).version == (1, 1)
    assert read_all(store, "obj") == b""
    result = primary(store, "obj", Create(True))
    assert result.code == Code.EEXIST and result.version == (1, 1)
    assert ok(primary(store, "obj", Create(False))).version == (1, 2)


def test_delete_leaves_nothing_behind(store: ObjectStore) -> None:
    assert primary(store, "obj", Delete()).code == Code.ENOENT
    ok(primary(store, "obj", Write(0, b"data"), SetXattr("a", b"1"), OmapSet({"k": b"v"})))
    assert ok(primary(store, "obj", Delete())).version == (1, 2)
    assert store.stat(POOL, "obj") is None
    assert store.execute_read(POOL, "obj", [Read(0, 4)]).code == Code.ENOENT
    assert primary(store, "obj", Delete()).code == Code.ENOENT
    ok(primary(store, "obj", Create(True)))
    result = ok(store.execute_read(POOL, "obj", [Read(0, 9), GetXattrs(), OmapList(None, 9, "")]))
    assert result.results == [b"", {}, {"entries": [], "more": False}]
    ok(primary(store, "obj", Write(0, b"x"), Delete(), Write(2, b"y")))  # absent in between
    assert read_all(store, "obj") == b"\x00\x00y"


def test_xattrs(store: ObjectStore) -> None:
    ok(primary(store, "obj", SetXattr("b", b"2"), SetXattr("a", b"1"), SetXattr("b", b"3")))
    assert store.execute_read(POOL, "obj", [GetXattrs()]).results == [{"a": b"1", "b": b"3"}]
    ok(primary(store, "obj", RmXattr("b"), RmXattr("missing")))
    assert store.execute_read(POOL, "obj", [GetXattrs()]).results == [{"a": b"1"}]


def test_omap(store: ObjectStore) -> None:
    ok(primary(store, "idx", OmapSet({"a": b"1", "b": b"2", "c": b"3"}), OmapRm(("b", "zz"))))
    result = ok(store.execute_read(POOL, "idx", [OmapGet(("a", "b", "c", "d"))]))
    assert result.results == [{"a": b"1", "c": b"3"}]
    ok(primary(store, "idx", OmapClear(), OmapSet({"x": b""})))
    assert store.execute_read(POOL, "idx", [OmapGet(("a", "x"))]).results == [{"x": b""}]


def test_omap_list_pages_in_key_order_within_a_prefix(store: ObjectStore) -> None:
    keys = ["a", "b/1", "b/2", "b/3", "b/é", "b0", "c"]
    ok(primary(store, "idx", OmapSet({k: k.encode() for k in reversed(keys)})))

    def page(start: str | None, limit: int, prefix: str) -> tuple[list[str], bool]:
        [listing] = ok(store.execute_read(POOL, "idx", [OmapList(start, limit, prefix)])).results
        assert isinstance(listing, dict)
        assert all(v == k.encode() for k, v in listing["entries"])
        return [k for k, _ in listing["entries"]], listing["more"]

    assert page(None, 100, "") == (keys, False)
    assert page(None, 2, "b/") == (["b/1", "b/2"], True)
    assert page("b/2", 2, "b/") == (["b/3", "b/é"], False)
    assert page("b/é", 2, "b/") == ([], False)
    assert page("a", 1, "b/") == (["b/1"], True)  # start before the prefix
    assert page("b0", 10, "") == (["c"], False)
    assert page(None, 0, "") == ([], True)
    assert page(None, 4, "b/") == (["b/1", "b/2", "b/3", "b/é"], False)


# --- conditions and atomicity ----------------------------------------------------------


def test_conditions(store: ObjectStore) -> None:
    result = primary(store, "obj", Write(0, b"x"), cond=Cond(exists=True))
    assert result.code == Code.ECANCELED and result.version == (0, 0)
    ok(primary(store, "obj", Write(0, b"a"), cond=Cond(exists=False)))
    ok(primary(store, "obj", Write(0, b"b"), cond=Cond(exists=True, version=(1, 1))))
    result = primary(store, "obj", Write(0, b"c"), cond=Cond(version=(1, 1)))
    assert result.code == Code.ECANCELED and result.version == (1, 2)
    assert read_all(store, "obj") == b"b"
    ok(primary(store, "obj", Delete()))
    ok(primary(store, "obj", Write(0, b"d"), cond=Cond(version=(0, 0))))  # a tombstone is absent


def test_a_failing_operation_undoes_the_whole_request(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"before"), reqid="c:0"))
    result = primary(
        store, "obj", Write(0, b"after!"), SetXattr("a", b"1"), OmapSet({"k": b"v"}), Create(True)
    )
    assert result.code == Code.EEXIST and result.results == []
    read = ok(store.execute_read(POOL, "obj", [Read(0, 10), GetXattrs(), OmapGet(("k",))]))
    assert read.results == [b"before", {}, {}]
    assert read.version == (1, 1)
    assert primary(store, "new", Write(0, b"x"), Delete(), Delete()).code == Code.ENOENT
    assert store.stat(POOL, "new") is None
    assert store.pg_info(POOL, 0).last_version == (1, 1)
    assert store.pg_log_since(POOL, 0, 0) == [LogEntry((1, 1), "obj", "modify", "c:0")]


def test_one_failing_request_leaves_the_rest_of_its_batch(store: ObjectStore) -> None:
    results = store.apply_batch(
        [
            PrimaryTxn(POOL, 0, "a", [Write(0, b"a")], None, 1, "r1"),
            PrimaryTxn(POOL, 0, "b", [Delete()], None, 1, "r2"),
            PrimaryTxn(POOL, 0, "c", [Write(0, b"c")], None, 1, "r3"),
        ]
    )
    assert [r.code for r in results] == [Code.OK, Code.ENOENT, Code.OK]
    assert [r.version for r in results] == [(1, 1), (0, 0), (1, 2)]
    assert read_all(store, "a") == b"a" and read_all(store, "c") == b"c"


# --- damage, failure, persistence ------------------------------------------------------


def test_a_damaged_block_is_never_served(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"\x07" * 3 * BS)))
    corrupt_block(store, "obj", 1)
    result = store.execute_read(POOL, "obj", [Read(BS + 100, 10)])
    assert result.code == Code.EIO and result.results == []
    assert result.message == "checksum mismatch in object 'obj' block 1"
    assert store.checksum_errors == 1
    assert ok(store.execute_read(POOL, "obj", [Read(0, BS)])).results == [b"\x07" * BS]
    # Rewriting part of the block would need its bad bytes: refused, not laundered.
    assert primary(store, "obj", Write(BS, b"x")).code == Code.EIO
    assert store.checksum_errors == 2
    with pytest.raises(ChecksumError):
        store.object_state(POOL, "obj")
    assert store.checksum_errors == 3
    ok(primary(store, "obj", Write(BS, b"\x07" * BS)))  # a whole-block write repairs it
    assert read_all(store, "obj") == b"\x07" * 3 * BS


def test_a_damaged_block_inside_a_long_run_is_named(store: ObjectStore) -> None:
    # 100 blocks written at once lie in consecutive slots, across two block-map rows:
    # a read of them is one pread, checked in bulk.
    data = bytes(range(256)) * (100 * BS // 256)
    ok(primary(store, "big", Write(0, data)))
    assert ok(store.execute_read(POOL, "big", [Read(0, len(data))])).results == [data]
    within = ok(store.execute_read(POOL, "big", [Read(70 * BS - 5, 10 * BS)])).results
    assert within == [data[70 * BS - 5 : 80 * BS - 5]]
    corrupt_block(store, "big", 77)
    result = store.execute_read(POOL, "big", [Read(0, len(data))])
    assert result.code == Code.EIO
    assert result.message == "checksum mismatch in object 'big' block 77"
    assert ok(store.execute_read(POOL, "big", [Read(0, 77 * BS)])).results == [data[: 77 * BS]]


def test_a_read_over_holes_and_scattered_blocks_returns_every_byte(store: ObjectStore) -> None:
    ok(primary(store, "sparse", Write(0, b"a" * 3 * BS)))
    ok(primary(store, "sparse", Write(10 * BS, b"b" * 2 * BS)))  # a hole before it
    ok(primary(store, "sparse", Write(BS, b"c" * BS)))  # its own slot, out of the run
    want = b"a" * BS + b"c" * BS + b"a" * BS + bytes(7 * BS) + b"b" * 2 * BS
    assert ok(store.execute_read(POOL, "sparse", [Read(0, 12 * BS)])).results == [want]
    corrupt_block(store, "sparse", 11)
    result = store.execute_read(POOL, "sparse", [Read(0, 12 * BS)])
    assert result.code == Code.EIO
    assert result.message == "checksum mismatch in object 'sparse' block 11"


def test_a_full_database_fails_the_whole_batch(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"small")))
    (pages,) = store._writer.execute("PRAGMA page_count").fetchone()
    store._writer.execute(f"PRAGMA max_page_count = {pages + 2}")
    values = {f"key{i}": bytes(1000) for i in range(100)}
    results = store.apply_batch(
        [
            PrimaryTxn(POOL, 0, "obj", [Write(0, b"x")], None, 1, "r1"),
            PrimaryTxn(POOL, 0, "big", [OmapSet(values)], None, 1, "r2"),
        ]
    )
    assert [r.code for r in results] == [Code.ENOSPC, Code.ENOSPC]
    assert "disk full" in results[0].message
    assert read_all(store, "obj") == b"small"
    assert store.stat(POOL, "big") is None
    assert store.pg_info(POOL, 0).last_version == (1, 1)
    store._writer.execute("PRAGMA max_page_count = 1073741823")
    assert ok(primary(store, "big", OmapSet(values))).version == (1, 2)


def test_a_full_data_file_fails_the_whole_batch(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok(primary(store, "obj", Write(0, b"small")))
    slots_before = store.space.stats()["data_slots"]
    real_pwritev, real_pwrite = os.pwritev, os.pwrite
    calls = 0

    def then_full(real: Any) -> Any:
        def write(fd: int, data: Any, offset: int) -> int:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return int(real(fd, data, offset))

        return write

    # Direct writes use pwrite, buffered ones pwritev: either way the disk fills up.
    monkeypatch.setattr(os, "pwritev", then_full(real_pwritev))
    monkeypatch.setattr(os, "pwrite", then_full(real_pwrite))
    results = store.apply_batch(
        [
            PrimaryTxn(POOL, 0, "obj", [Write(0, b"x")], None, 1, "r1"),
            PrimaryTxn(POOL, 0, "big", [Write(0, b"y" * 100 * BS)], None, 1, "r2"),
        ]
    )
    assert [r.code for r in results] == [Code.ENOSPC, Code.ENOSPC]
    assert "disk full" in results[0].message
    monkeypatch.setattr(os, "pwritev", real_pwritev)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    store.release_freed()
    assert read_all(store, "obj") == b"small"
    assert store.stat(POOL, "big") is None
    assert store.pg_info(POOL, 0).last_version == (1, 1)
    # The slots the failed batch took are free again; the old block was never freed.
    assert store.space.stats()["data_slots"] == slots_before
    assert ok(primary(store, "big", Write(0, b"y" * 100 * BS))).version == (1, 2)
    assert read_all(store, "big") == b"y" * 100 * BS


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path), block_size=512, max_log_entries=10)
    ok(primary(store, "obj", Write(700, b"data"), SetXattr("a", b"1"), OmapSet({"k": b"v"})))
    ok(primary(store, "gone", Create(False), epoch=2))
    ok(primary(store, "gone", Delete(), epoch=2))
    store.close()
    store = ObjectStore(str(tmp_path), block_size=4096)
    assert store.block_size == 512
    assert block_rows(store, "obj") == [1]
    assert read_all(store, "obj") == bytes(700) + b"data"
    result = ok(store.execute_read(POOL, "obj", [GetXattrs(), OmapGet(("k",))]))
    assert result.results == [{"a": b"1"}, {"k": b"v"}]
    gone = store.object_state(POOL, "gone")
    assert (gone.exists, gone.version, gone.mtime > 0) == (False, (2, 3), True)
    assert store.pg_info(POOL, 0) == PgInfo((2, 3), 0)
    assert [e.kind for e in store.pg_log_since(POOL, 0, 0) or []] == ["modify", "modify", "delete"]
    assert ok(primary(store, "obj", Truncate(0), epoch=2)).version == (2, 4)
    store.close()


def test_bad_configuration(tmp_path: Path) -> None:
    for block_size in (100, 256, 3000, 1 << 17):
        with pytest.raises(ConfigError):
            ObjectStore(str(tmp_path / "x"), block_size=block_size)
    with pytest.raises(ConfigError):
        ObjectStore(str(tmp_path / "y"), max_log_entries=0)


# --- the data path against a model ------------------------------------------------------

MODEL_BS = 512
LIMIT = 4 * MODEL_BS  # small objects, several blocks: every edge gets exercised
_model_objects = itertools.count()


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    opened = ObjectStore(str(tmp_path_factory.mktemp("model")), block_size=MODEL_BS)
    yield opened
    opened.close()


positions = st.integers(0, LIMIT) | st.builds(
    lambda block, delta: max(0, block * MODEL_BS + delta), st.integers(0, 4), st.integers(-2, 2)
)
lengths = st.integers(0, 2 * MODEL_BS) | positions
payloads = st.binary(max_size=2 * MODEL_BS + 3) | st.binary(max_size=MODEL_BS).map(
    lambda b: bytes(len(b))
)
data_ops = st.one_of(
    st.builds(Write, positions, payloads),
    st.builds(WriteFull, payloads),
    st.builds(Truncate, positions),
    st.builds(Zero, positions, lengths),
)


def apply_to_model(model: bytearray, op: Op) -> None:
    match op:
        case Write(offset, data) if data:
            if len(model) < offset + len(data):
                model.extend(bytes(offset + len(data) - len(model)))
            model[offset : offset + len(data)] = data
        case WriteFull(data):
            model[:] = data
        case Truncate(size):
            del model[size:]
            model.extend(bytes(size - len(model)))
        case Zero(offset, length):
            end = min(offset + length, len(model))
            if offset < end:
                model[offset:end] = bytes(end - offset)


@settings(max_examples=150, deadline=None)
@given(st.lists(data_ops, min_size=1, max_size=12))
def test_data_operations_match_a_bytearray(model_store: ObjectStore, ops: list[Op]) -> None:
    name = f"model-{next(_model_objects)}"
    # One request per operation, each reading the whole object back after it, all in
    # one batch: every intermediate state is checked for the price of one commit.
    batch = [
        PrimaryTxn(POOL, 0, name, [op, Read(0, 2 * LIMIT)], None, 1, f"{name}:{i}")
        for i, op in enumerate(ops)
    ]
    results = model_store.apply_batch(batch)
    model = bytearray()
    for op, result in zip(ops, results, strict=True):
        apply_to_model(model, op)
        assert result.code == Code.OK
        assert result.results[1] == model, op
    assert read_all(model_store, name) == model
    for index, content in stored_blocks(model_store, name):  # zeros past the end, no empty block
        assert len(content) == MODEL_BS and any(content)
        assert not any(content[max(0, len(model) - index * MODEL_BS) :])
