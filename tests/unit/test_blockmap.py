"""Block maps (store.osd.blockmap): bulk updates agree with block-by-block ones."""

from __future__ import annotations

import sqlite3
from array import array

from hypothesis import given
from hypothesis import strategies as st

from store.osd.blockmap import CHUNK_BLOCKS, BlockMaps

SPAN = 3 * CHUNK_BLOCKS


def fresh() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE blockmap (id INTEGER PRIMARY KEY, map BLOB NOT NULL)")
    return db


runs = st.lists(st.tuples(st.integers(0, SPAN - 1), st.integers(1, 2 * CHUNK_BLOCKS)), max_size=6)


@given(runs, st.lists(st.integers(0, SPAN - 1), max_size=10), st.booleans())
def test_set_run_matches_setting_each_block(
    spans: list[tuple[int, int]], holes: list[int], arrays: bool
) -> None:
    one, bulk = fresh(), fresh()
    a, b = BlockMaps(one, 7, 0, 10), BlockMaps(bulk, 7, 0, 10)
    slot = 0
    for first, count in spans:
        slots = list(range(slot, slot + count))
        sums = [(s * 2654435761) % (1 << 63) - (1 << 62) for s in slots]  # some negative
        for k in range(count):
            a.set(first + k, slots[k], sums[k])
        if arrays:  # as the object store passes them (checksums always, slots here too)
            b.set_run(first, array("q", slots), array("q", sums))
        else:
            b.set_run(first, slots, sums)
        slot += count
    for index in holes:
        a.clear(index)
        b.clear(index)
    last = SPAN + 2 * CHUNK_BLOCKS
    assert a.present(0, last) == b.present(0, last)
    expected = [(found[0] if (found := a.get(i)) is not None else -1) for i in range(last + 1)]
    assert b.slots_of(0, last) == expected
    assert b.slots_of(5, 5 + CHUNK_BLOCKS) == expected[5 : 6 + CHUNK_BLOCKS]
    a.save()
    b.save()
    rows = "SELECT id, map FROM blockmap ORDER BY id"
    assert one.execute(rows).fetchall() == bulk.execute(rows).fetchall()
