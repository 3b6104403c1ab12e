"""What the object store does for a PG's primary: scrub maps, repairs and the object
states recovery installs, object counts per PG, and scrub stamps."""

from __future__ import annotations

from pathlib import Path

import xxhash

from store.errors import Code
from store.osd.objectdata import pairs_digest
from store.osd.objectstore import ObjectStore
from store.osd.ops import Create, Delete, OmapSet, Read, SetXattr, Write
from store.osd.txns import ObjectState, ObjectStateTxn, PgRemoveTxn, PgScrubStampTxn
from tests.unit.objectstore_support import (
    BS,
    POOL,
    block_slot,
    corrupt_block,
    ok,
    primary,
    read_all,
)

# --- counts and stamps -------------------------------------------------------------------


def test_live_objects_are_counted_per_pg(store: ObjectStore) -> None:
    assert store.pg_object_counts() == {}
    for i in range(5):
        ok(primary(store, f"a{i}", Write(0, b"x"), pg=3))
    ok(primary(store, "b", Create(True), pg=7))
    ok(primary(store, "a0", Delete(), pg=3))  # a tombstone is not an object
    assert store.pg_object_counts() == {(POOL, 3): 4, (POOL, 7): 1}
    assert [store.pg_object_count(POOL, pg) for pg in (3, 7, 9)] == [4, 1, 0]


def test_scrub_stamps_are_kept_until_the_pg_goes(store: ObjectStore) -> None:
    assert store.pg_scrub_stamps(POOL, 3) == (0.0, 0.0)
    [result] = store.apply_batch([PgScrubStampTxn(POOL, 3, 1700000000.5, 1690000000.25)])
    assert result.code == Code.OK
    assert store.pg_scrub_stamps(POOL, 3) == (1700000000.5, 1690000000.25)
    assert store.pg_scrub_stamps(POOL, 4) == (0.0, 0.0)
    store.apply_batch([PgRemoveTxn(POOL, 3)])
    assert store.pg_scrub_stamps(POOL, 3) == (0.0, 0.0)
    # A value that is not two numbers reads as never scrubbed.
    store._writer.execute("INSERT INTO meta (key, value) VALUES ('scrub.1.5', 'x')")
    assert store.pg_scrub_stamps(POOL, 5) == (0.0, 0.0)


# --- scrub maps and repairs ---------------------------------------------------------------


def test_scrub_pages_list_objects_and_tombstones_in_name_order(store: ObjectStore) -> None:
    for name in ("d", "a", "c", "b"):
        ok(primary(store, name, Write(0, name.encode())))
    ok(primary(store, "e", Write(0, b"other pg"), pg=1))
    ok(primary(store, "b", Delete()))
    page = store.scrub_page(POOL, 0, deep=False)
    assert [(n, e.exists, e.size, e.version) for n, e in page.entries] == [
        ("a", True, 1, (1, 2)),
        ("b", False, 0, (1, 5)),
        ("c", True, 1, (1, 3)),
        ("d", True, 1, (1, 1)),
    ]
    assert page.next is None and page.head == (1, 5)
    assert all(e.data is None and e.omap is None and e.error is None for _, e in page.entries)
    first = store.scrub_page(POOL, 0, deep=False, limit=2)
    assert [n for n, _ in first.entries] == ["a", "b"] and first.next == "b"
    rest = store.scrub_page(POOL, 0, deep=False, after="b", limit=2)
    assert [n for n, _ in rest.entries] == ["c", "d"] and rest.next is None
    bounded = store.scrub_page(POOL, 0, deep=False, after="a", upto="c")
    assert [n for n, _ in bounded.entries] == ["b", "c"] and bounded.next is None
    named = store.scrub_page(POOL, 0, deep=False, names=["d", "zz", "e", "b"])
    assert [n for n, _ in named.entries] == ["d", "b"]  # e lives in another PG


def test_deep_scrub_digests_data_attributes_and_omap(tmp_path: Path) -> None:
    stores = [ObjectStore(str(tmp_path / name)) for name in ("one", "two")]
    try:
        for s in stores:
            ok(
                primary(
                    s, "obj", Write(5, b"x" * (2 * BS)), SetXattr("k", b"v"), OmapSet({"o": b"1"})
                )
            )
        [(_, one)], [(_, two)] = (s.scrub_page(POOL, 0, deep=True).entries for s in stores)
        assert one == two
        assert one.data == xxhash.xxh3_64_intdigest(bytes(5) + b"x" * (2 * BS))
        assert one.omap == pairs_digest([("o", b"1")]) and one.attrs == pairs_digest([("k", b"v")])
        ok(primary(stores[1], "obj", OmapSet({"o": b"2"}), SetXattr("k", b"w"), Write(0, b"y")))
        [(_, changed)] = stores[1].scrub_page(POOL, 0, deep=True).entries
        assert changed.omap != one.omap and changed.attrs != one.attrs
        assert changed.data != one.data
        light = stores[1].scrub_page(POOL, 0, deep=False).entries[0][1]
        assert light.attrs == changed.attrs and light.data is None
    finally:
        for s in stores:
            s.close()


def test_deep_scrub_finds_a_damaged_block(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"\x07" * 3 * BS)))
    ok(primary(store, "fine", Write(0, b"fine")))
    corrupt_block(store, "obj", 2)
    entries = store.scrub_page(POOL, 0, deep=True).entries
    assert [n for n, _ in entries] == ["fine", "obj"]
    (_, fine), (_, damaged) = entries
    assert fine.error is None and fine.data is not None
    assert damaged.error == "checksum mismatch in object 'obj' block 2"
    assert damaged.data is None and damaged.size == 3 * BS
    assert store.checksum_errors == 1
    light = store.scrub_page(POOL, 0, deep=False).entries[1][1]
    assert light.error is None  # a light scrub reads no data


def test_a_deep_scrub_page_stops_after_its_byte_budget(store: ObjectStore) -> None:
    for name in ("a", "b", "c"):
        ok(primary(store, name, Write(0, b"z" * 3 * BS)))
    first = store.scrub_page(POOL, 0, deep=True, byte_budget=4 * BS)
    assert [n for n, _ in first.entries] == ["a", "b"] and first.next == "b"
    rest = store.scrub_page(POOL, 0, deep=True, after="b", byte_budget=1)
    assert [n for n, _ in rest.entries] == ["c"] and rest.next is None
    # A light page is bounded by its number of objects only.
    assert len(store.scrub_page(POOL, 0, deep=False, byte_budget=1).entries) == 3


def test_a_damaged_copy_of_the_same_version_is_replaced_only_for_a_repair(
    store: ObjectStore,
) -> None:
    good = b"\x07" * 2 * BS
    version = ok(primary(store, "obj", Write(0, good), SetXattr("k", b"v"))).version
    corrupt_block(store, "obj", 0)
    result = store.execute_read(POOL, "obj", [Read(0, 10)])
    assert result.code == Code.EIO and result.damaged and result.version == version
    assert not store.execute_read(POOL, "nothing", [Read(0, 10)]).damaged
    state = ObjectState("obj", True, version, len(good), 1.0, {"k": b"v"}, {}, good)
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, state)])
    assert ok(result).results == [False]  # recovery never replaces the same version
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, state, replace_equal=True)])
    assert ok(result).results == [True] and result.version == version
    assert read_all(store, "obj") == good
    assert store.pg_info(POOL, 0).last_version == version  # history untouched
    older = ObjectState("obj", True, (version[0], version[1] - 1), 3, 1.0, {}, {}, b"old")
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, older, replace_equal=True)])
    assert ok(result).results == [False] and read_all(store, "obj") == good


def test_freed_slots_are_not_reused_while_a_read_runs_off_the_event_loop(
    store: ObjectStore,
) -> None:
    ok(primary(store, "a", Write(0, b"1" * BS)))
    ok(primary(store, "b", Write(0, b"2" * BS)))
    old = block_slot(store, "a")
    with store.pinned_slots():
        ok(primary(store, "a", Write(0, b"3" * BS)))  # frees a's old slot
        store.release_freed()  # as the write queue does after each batch
        ok(primary(store, "c", Write(0, b"4" * BS)))
        assert block_slot(store, "c") != old
    # Released when the last pin goes: the next write may take the slot.
    ok(primary(store, "d", Write(0, b"5" * BS)))
    assert block_slot(store, "d") == old
    assert [read_all(store, n)[:1] for n in "abcd"] == [b"3", b"2", b"4", b"5"]


def test_an_authoritative_state_rolls_back_a_divergent_copy(store: ObjectStore) -> None:
    """A copy written by a primary whose writes were never acknowledged is replaced by the
    authoritative history's state even when that is older — or removed when it has none."""
    old = ok(primary(store, "obj", Write(0, b"agreed"))).version
    ok(primary(store, "obj", Write(0, b"diverge")))
    ok(primary(store, "only-ours", Write(0, b"x")))
    agreed = ObjectState("obj", True, old, 6, 1.0, {}, {}, b"agreed")
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, agreed)])
    assert ok(result).results == [False]  # an ordinary install never goes back
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, agreed, authoritative=True)])
    assert ok(result).results == [True]
    assert read_all(store, "obj") == b"agreed"
    assert store.stat(POOL, "obj") is not None
    absent = ObjectState("only-ours", False, (0, 0), 0, 0.0)
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, absent, authoritative=True)])
    assert ok(result).results == [True]
    assert store.stat(POOL, "only-ours") is None
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, agreed, authoritative=True)])
    assert ok(result).results == [False]  # the same version: nothing to do
