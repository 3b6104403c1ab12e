"""The anti-replay window (store.wire.replay) against a plain reference model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.wire.replay import ReplayWindow


class ReferenceWindow:
    """Obviously correct and unbounded: every seq ever accepted, plus the highest."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seen: set[int] = set()
        self.highest = 0

    def accept(self, seq: int) -> bool:
        if seq <= 0 or seq < self.highest - self.size + 1 or seq in self.seen:
            return False
        self.seen.add(seq)
        self.highest = max(self.highest, seq)
        return True


def sequences(size: int) -> st.SearchStrategy[list[int]]:
    """Mostly near the running position, with duplicates, stale values and big jumps."""
    step = st.one_of(
        st.integers(-3, 3),  # local reordering and duplicates
        st.integers(-2 * size, 2 * size),  # around the window edge
        st.integers(-(10**6), 10**6),  # far in the past or a big jump ahead
        st.just(0),
    )
    return st.lists(step, max_size=300).map(_walk)


def _walk(steps: list[int]) -> list[int]:
    position, walk = 1, []
    for step in steps:
        position += step
        walk.append(position)
    return walk


@given(st.data(), st.sampled_from([1, 2, 3, 7, 8, 63, 64, 65, 200]))
def test_matches_reference_model(data: st.DataObject, size: int) -> None:
    window, reference = ReplayWindow(size), ReferenceWindow(size)
    for seq in data.draw(sequences(size)):
        assert window.accept(seq) == reference.accept(seq), seq
        assert window.highest == reference.highest


@given(st.lists(st.integers(-(2**64), 2**64), max_size=200))
def test_matches_reference_model_on_arbitrary_values(seqs: list[int]) -> None:
    window, reference = ReplayWindow(), ReferenceWindow(4096)
    for seq in seqs:
        assert window.accept(seq) == reference.accept(seq), seq


def test_in_order_stream_is_accepted_once() -> None:
    window = ReplayWindow(64)
    assert all(window.accept(seq) for seq in range(1, 1000))
    assert not any(window.accept(seq) for seq in range(1, 1000))


def test_window_edges() -> None:
    window = ReplayWindow(4096)
    assert not window.accept(0)
    assert not window.accept(-1)
    assert window.accept(10_000)
    assert window.accept(10_000 - 4095)  # the oldest seq still inside
    assert not window.accept(10_000 - 4096)  # just outside
    assert not window.accept(10_000 - 4095)  # now a duplicate
    assert window.accept(9_999)
    assert window.accept(10_000 + 4096)  # jump by exactly the size: old window forgotten
    assert not window.accept(10_000)
    assert window.accept(10_000 + 1)


def test_reordered_arrivals_inside_the_window() -> None:
    window = ReplayWindow(8)
    for seq in (5, 3, 8, 1, 2, 7):
        assert window.accept(seq)
    assert window.accept(4)
    assert window.accept(6)
    assert not any(window.accept(seq) for seq in range(1, 9))


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplayWindow(0)
