"""Byte ranges to object pieces, and extents from object sizes (no I/O)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from store.image.layout import Extent, Piece, extents, objects_spanned, pieces

OS = 4096


def test_a_range_inside_one_object_is_one_piece() -> None:
    assert list(pieces(5000, 100, OS)) == [Piece(index=1, offset=904, length=100, start=0)]


def test_a_range_is_cut_where_objects_meet() -> None:
    assert list(pieces(4000, 9000, OS)) == [
        Piece(0, 4000, 96, 0),
        Piece(1, 0, 4096, 96),
        Piece(2, 0, 4096, 4192),
        Piece(3, 0, 712, 8288),
    ]
    assert list(pieces(0, 0, OS)) == []
    assert objects_spanned(4000, 9000, OS) == range(0, 4)
    assert objects_spanned(4096, 4096, OS) == range(1, 2)
    assert objects_spanned(10, 0, OS) == range(0)


@given(st.integers(0, 10**12), st.integers(0, 200_000), st.sampled_from([4096, 65536, 1 << 22]))
def test_pieces_tile_the_range_exactly(offset: int, length: int, object_size: int) -> None:
    cut = list(pieces(offset, length, object_size))
    assert sum(p.length for p in cut) == length
    position = offset
    for p in cut:
        assert p.length > 0 and p.offset >= 0 and p.end <= object_size
        assert p.index * object_size + p.offset == position
        assert p.start == position - offset
        position += p.length
    assert [p.index for p in cut] == list(objects_spanned(offset, length, object_size))


def test_extents_of_missing_and_partial_objects() -> None:
    # object 0 missing, object 1 holds 1000 bytes, object 2 is full, object 3 missing
    sizes = {0: None, 1: 1000, 2: OS, 3: None}
    assert extents(0, 4 * OS, OS, sizes) == [
        Extent(0, OS, hole=True),
        Extent(OS, 1000, hole=False),
        Extent(OS + 1000, OS - 1000, hole=True),
        Extent(2 * OS, OS, hole=False),
        Extent(3 * OS, OS, hole=True),
    ]


def test_extents_merge_neighbours_and_clip_to_the_range() -> None:
    sizes = {0: OS, 1: OS, 2: None, 3: None}
    assert extents(100, 4 * OS - 200, OS, sizes) == [
        Extent(100, 2 * OS - 100, hole=False),
        Extent(2 * OS, 2 * OS - 100, hole=True),
    ]


def test_extents_stop_at_the_first_unknown_object() -> None:
    assert extents(0, 3 * OS, OS, {0: None, 2: OS}) == [Extent(0, OS, hole=True)]
    assert extents(0, OS, OS, {}) == []


@given(
    st.integers(0, 8 * OS),
    st.integers(1, 8 * OS),
    st.lists(st.one_of(st.none(), st.integers(0, OS)), min_size=17, max_size=17),
)
def test_extents_tile_from_the_offset(offset: int, length: int, raw: list[int | None]) -> None:
    found = extents(offset, length, OS, dict(enumerate(raw)))
    assert found[0].offset == offset
    assert sum(e.length for e in found) == length
    for a, b in itertools.pairwise(found):
        assert a.end == b.offset and a.hole != b.hole
