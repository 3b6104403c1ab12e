"""Degraded and misplaced object copies of one PG, as its primary counts them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from store.osd.pgstats import copy_shortfall


def test_a_clean_pg_lacks_nothing() -> None:
    assert copy_shortfall(100, 3, 3, [], 0) == (0, 0)


def test_a_member_down_lacks_every_object() -> None:
    # Acting set of two for a pool of size three: one copy of each object is missing.
    assert copy_shortfall(100, 3, 2, [], 0) == (100, 0)
    assert copy_shortfall(100, 3, 1, [], 0) == (200, 0)


def test_a_recovering_member_lacks_what_is_left_to_push() -> None:
    assert copy_shortfall(100, 3, 3, [30], 0) == (30, 0)
    # Not listed yet: all of them; more names than objects (deletions): at most all.
    assert copy_shortfall(100, 3, 3, [None], 0) == (100, 0)
    assert copy_shortfall(100, 3, 3, [250, 5], 0) == (105, 0)


def test_copies_a_former_member_still_holds_are_misplaced() -> None:
    # A move: the new member is backfilled while the old one keeps its complete copy.
    assert copy_shortfall(100, 3, 3, [40], 1) == (0, 40)
    # Two members missing, one former member covering one of them.
    assert copy_shortfall(100, 3, 3, [None, 60], 1) == (60, 100)


@given(
    objects=st.integers(0, 10_000),
    size=st.integers(1, 5),
    acting=st.integers(0, 5),
    pending=st.lists(st.one_of(st.none(), st.integers(-5, 20_000)), max_size=4),
    interim=st.integers(0, 3),
)
def test_counts_are_bounded(
    objects: int, size: int, acting: int, pending: list[int | None], interim: int
) -> None:
    degraded, misplaced = copy_shortfall(objects, size, acting, pending, interim)
    assert degraded >= 0 and misplaced >= 0
    assert misplaced <= interim * objects
    missing_members = max(0, size - acting) + len(pending)
    assert degraded + misplaced <= missing_members * objects
