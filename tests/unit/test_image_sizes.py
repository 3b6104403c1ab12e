"""What an open image knows of its objects, under overlapping requests (no I/O)."""

from __future__ import annotations

import pytest

from store.image.sizes import ObjectSizes


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_observations_are_kept() -> None:
    sizes = ObjectSizes(Clock(), keep_for=None)
    assert sizes.get(3) == (False, None)
    sizes.observed(3, None, sizes.stamp(3))
    sizes.observed(4, 4096, sizes.stamp(4))
    assert sizes.get(3) == (True, None)
    assert sizes.get(4) == (True, 4096)
    sizes.clear()
    assert sizes.get(4) == (False, None)


def test_a_read_that_overlapped_a_write_teaches_nothing() -> None:
    """The read found the object missing, but a write created it meanwhile."""
    sizes = ObjectSizes(Clock(), keep_for=None)
    stamp = sizes.stamp(7)
    with sizes.changing(7) as change:
        change.grown(100)
    sizes.observed(7, None, stamp)  # the read's answer arrives late
    assert sizes.get(7) == (False, None)


def test_a_read_during_a_write_teaches_nothing() -> None:
    sizes = ObjectSizes(Clock(), keep_for=None)
    with sizes.changing(7) as change:
        sizes.observed(7, None, sizes.stamp(7))
        assert sizes.get(7) == (False, None)
        change.sized(10)
    assert sizes.get(7) == (True, 10)


def test_changes_set_what_they_made_true() -> None:
    sizes = ObjectSizes(Clock(), keep_for=None)
    with sizes.changing(1) as change:
        change.grown(500)
    assert sizes.get(1) == (False, None)  # grown, but from an unknown size
    sizes.observed(1, None, sizes.stamp(1))
    with sizes.changing(1) as change:
        change.grown(500)
    assert sizes.get(1) == (True, 500)  # a write created it
    with sizes.changing(1) as change:
        change.grown(300)
    assert sizes.get(1) == (True, 500)
    with sizes.changing(1) as change:
        change.same()
    assert sizes.get(1) == (True, 500)
    with sizes.changing(1) as change:
        change.missing()
    assert sizes.get(1) == (True, None)


def test_overlapping_or_failed_changes_leave_the_object_unknown() -> None:
    sizes = ObjectSizes(Clock(), keep_for=None)
    sizes.observed(2, 10, sizes.stamp(2))
    with sizes.changing(2) as first, sizes.changing(2) as second:
        first.missing()
        second.sized(99)
    assert sizes.get(2) == (False, None)
    sizes.observed(2, 10, sizes.stamp(2))
    with pytest.raises(RuntimeError), sizes.changing(2) as change:
        change.same()
        raise RuntimeError("the write failed")
    assert sizes.get(2) == (False, None)


def test_readers_forget_after_a_while() -> None:
    clock = Clock()
    sizes = ObjectSizes(clock, keep_for=1.0)
    sizes.observed(5, None, sizes.stamp(5))
    clock.now = 0.9
    assert sizes.get(5) == (True, None)
    clock.now = 1.1
    assert sizes.get(5) == (False, None)
