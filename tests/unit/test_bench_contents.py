"""The bench's expected object contents and the check of what a read returned."""

from __future__ import annotations

from store.bench import Contents


def test_each_object_has_its_own_content_and_only_it_matches() -> None:
    contents = Contents("a1b2c3", 10_000)
    first, second = contents.of(0), contents.of(1)
    assert len(first) == len(second) == 10_000 and first != second
    assert contents.matches(0, first) and contents.matches(1, second)
    assert not contents.matches(1, first)  # another object's bytes
    flipped = bytearray(first)
    flipped[9_999] ^= 1
    assert not contents.matches(0, bytes(flipped))
    assert not contents.matches(0, first[:-1])  # short
    assert not contents.matches(0, first + b"x")
    assert Contents("a1b2c3", 10_000).of(5) == contents.of(5)  # from the run id alone
