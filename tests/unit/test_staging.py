"""Staged writes held by the primary: pieces in place, commits, limits, expiry (no sockets)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from store.errors import Code
from store.malloc import PAGE
from store.osd.blockspace import BlockSpace
from store.osd.ops import InvalidRequest, Staged, Write, parse_ops_untrusted
from store.osd.staging import NotStaged, StagingArea, StagingFull

ALICE = ("alice", 1)
BOB = ("bob", 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def put(
    area: StagingArea, owner: tuple[str, int], token: int, offset: int, data: bytes, size: int
) -> bool:
    """What the front does with an authentic piece; whether it was opened in place."""
    target, _ = area.target(owner, token, 1, 3, offset, len(data), size)
    if target is None:
        return False
    target[:] = data
    area.fill(owner, token, offset, len(data))
    return True


def test_pieces_in_any_order_commit_as_one_and_are_dropped_once_decided() -> None:
    area = StagingArea(Clock())
    assert put(area, ALICE, 7, 4, b"5678", 8)
    assert area.held == 8  # the whole stage is spent at its first piece
    assert put(area, ALICE, 7, 0, b"1234", 8)
    assert not put(area, ALICE, 7, 4, b"5678", 8)  # sent again: only checked, aside
    assert area.take(ALICE, 7, 1, 3, 8) == b"12345678"
    area.release(ALICE, 7, done=False)  # a commit to retry keeps it
    assert area.take(ALICE, 7, 1, 3, 8) == b"12345678"
    area.release(ALICE, 7, done=True)
    assert area.held == 0 and len(area) == 0
    with pytest.raises(NotStaged):
        area.take(ALICE, 7, 1, 3, 8)


def test_pieces_land_in_one_buffer_that_starts_on_a_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # So that the data file writes it with O_DIRECT as it is, without a copy.
    area = StagingArea(Clock())
    pieces = [os.urandom(65000) for _ in range(5)]
    buffers = []
    for i, piece in enumerate(pieces):
        target, _ = area.target(ALICE, 3, 1, 3, 65000 * i, 65000, 5 * 65000)
        assert target is not None
        buffers.append(target.obj)
        target[:] = piece
        area.fill(ALICE, 3, 65000 * i, 65000)
    joined = area.take(ALICE, 3, 1, 3, 5 * 65000)
    assert all(b is joined.obj for b in buffers)  # opened in place: nothing joined
    assert bytes(joined) == b"".join(pieces)
    probe = ctypes.c_char.from_buffer(joined)
    assert ctypes.addressof(probe) % PAGE == 0
    del probe
    space = BlockSpace(str(tmp_path / "blocks.dat"), 4096, [])
    assert space.direct  # the test directory takes O_DIRECT (not tmpfs)
    written: list[object] = []
    pwrite = os.pwrite

    def spy(fd: int, data: memoryview, offset: int) -> int:
        written.append(data.obj)
        return pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", spy)
    slots = space.write_blocks([joined[: 79 * 4096]])
    assert written == [joined.obj]  # one write, straight from the stage's buffer
    assert space.read_run(slots[0], 79) == bytes(joined[: 79 * 4096])


def test_a_stage_with_a_gap_or_of_another_size_is_not_committed() -> None:
    area = StagingArea(Clock())
    put(area, ALICE, 1, 0, b"abcd", 12)
    put(area, ALICE, 1, 8, b"ijkl", 12)
    with pytest.raises(NotStaged, match="holds 8 of its 12 bytes"):
        area.take(ALICE, 1, 1, 3, 12)
    with pytest.raises(InvalidRequest, match="not 3"):
        area.take(ALICE, 1, 1, 3, 3)  # not what was staged either
    put(area, ALICE, 1, 4, b"efgh", 12)
    assert area.take(ALICE, 1, 1, 3, 12) == b"abcdefghijkl"


def test_overlapping_pieces_and_pieces_outside_the_stage_are_refused() -> None:
    area = StagingArea(Clock())
    put(area, ALICE, 1, 4, b"efgh", 16)
    for offset, length in [(2, 4), (6, 4), (4, 2), (0, 16), (3, 2)]:
        with pytest.raises(InvalidRequest, match="overlaps"):
            area.target(ALICE, 1, 1, 3, offset, length, 16)
    for offset, length in [(14, 4), (-1, 2), (0, 0)]:
        with pytest.raises(InvalidRequest, match="not within"):
            area.target(ALICE, 1, 1, 3, offset, length, 16)
    # Right next to a piece held is fine, on either side.
    assert put(area, ALICE, 1, 0, b"abcd", 16) and put(area, ALICE, 1, 8, b"ijkl", 16)


def test_stages_belong_to_their_client_and_pg() -> None:
    area = StagingArea(Clock())
    put(area, ALICE, 1, 0, b"data", 4)
    with pytest.raises(NotStaged):
        area.take(BOB, 1, 1, 3, 4)
    with pytest.raises(NotStaged):
        area.take(("alice", 2), 1, 1, 3, 4)  # another process of the same client
    with pytest.raises(InvalidRequest, match="another object"):
        area.take(ALICE, 1, 1, 4, 4)
    with pytest.raises(InvalidRequest, match="another object"):
        area.take(ALICE, 1, 2, 3, 4)
    with pytest.raises(InvalidRequest, match="another stage"):
        area.target(ALICE, 1, 2, 3, 4, 4, 8)  # same token, another pool
    with pytest.raises(InvalidRequest, match="another stage"):
        area.target(ALICE, 1, 1, 3, 4, 4, 8)  # same token, another size


def test_a_stage_made_by_a_forged_piece_is_forgotten() -> None:
    area = StagingArea(Clock())
    target, created = area.target(ALICE, 9, 1, 3, 0, 4, 1 << 20)
    assert target is not None and created and area.held == 1 << 20
    area.forget(ALICE, 9)  # the piece failed its tag: nothing of it stays
    assert len(area) == 0 and area.held == 0
    put(area, ALICE, 9, 0, b"real", 8)
    target, created = area.target(ALICE, 9, 1, 3, 4, 4, 8)
    assert not created
    area.forget(ALICE, 9)  # a stage holding authentic pieces stays
    assert len(area) == 1


def test_limits_per_stage_and_per_daemon() -> None:
    area = StagingArea(Clock(), budget=10, max_stage=8)
    with pytest.raises(InvalidRequest) as big:
        area.target(ALICE, 1, 1, 3, 0, 4, 9)
    assert big.value.code == Code.EFBIG
    put(area, ALICE, 1, 0, b"12345678", 8)
    with pytest.raises(StagingFull):
        area.target(BOB, 2, 1, 3, 0, 3, 3)
    area.release(ALICE, 1, done=True)  # never taken: dropping it is harmless
    put(area, BOB, 2, 0, b"123", 3)
    assert area.held == 3


def test_untouched_stages_expire_but_not_while_committing() -> None:
    clock = Clock()
    area = StagingArea(clock, ttl=30.0)
    put(area, ALICE, 1, 0, b"x", 1)
    put(area, ALICE, 2, 0, b"y", 1)
    area.take(ALICE, 2, 1, 3, 1)  # its commit is under way
    clock.now += 31
    area.sweep(clock.now)
    assert len(area) == 1 and area.held == 1
    with pytest.raises(NotStaged):
        area.take(ALICE, 1, 1, 3, 1)
    area.release(ALICE, 2, done=True)
    assert len(area) == 0 and area.held == 0


def test_only_client_requests_may_carry_staged_operations() -> None:
    raw = [["staged", 5, 4096, 100, False], ["setxattr", "k", b"v"]]
    ops = parse_ops_untrusted(raw, staged=True)
    assert ops[0] == Staged(5, 4096, 100, False)
    assert ops[0].to_wire() == raw[0]
    with pytest.raises(InvalidRequest, match="unknown operation"):
        parse_ops_untrusted(raw)  # a replica never accepts one
    with pytest.raises(InvalidRequest, match="offset 0"):
        parse_ops_untrusted([["staged", 5, 4096, 100, True]], staged=True)
    with pytest.raises(InvalidRequest):
        parse_ops_untrusted([["staged", -1, 0, 100, False]], staged=True)
    assert parse_ops_untrusted([["write", 0, b"x"]], staged=True) == [Write(0, b"x")]
