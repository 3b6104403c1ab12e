"""Staged writes held by the primary: pieces, commits, limits, expiry (no sockets)."""

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


def test_pieces_in_any_order_commit_as_one_and_are_dropped_once_decided() -> None:
    area = StagingArea(Clock())
    area.put(ALICE, 7, 1, "obj", 4, b"5678")
    area.put(ALICE, 7, 1, "obj", 0, b"1234")
    area.put(ALICE, 7, 1, "obj", 4, b"5678")  # sent again: replaces itself
    assert area.held == 8
    assert area.take(ALICE, 7, 1, "obj", 8) == b"12345678"
    area.release(ALICE, 7, done=False)  # a commit to retry keeps it
    assert area.take(ALICE, 7, 1, "obj", 8) == b"12345678"
    area.release(ALICE, 7, done=True)
    assert area.held == 0 and len(area) == 0
    with pytest.raises(NotStaged):
        area.take(ALICE, 7, 1, "obj", 8)


def test_pieces_are_joined_from_the_start_of_a_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # So that the data file writes them with O_DIRECT as they are, without a copy.
    area = StagingArea(Clock())
    pieces = [os.urandom(65000) for _ in range(5)]
    for i, piece in enumerate(pieces):
        area.put(ALICE, 3, 1, "obj", 65000 * i, piece)
    joined = area.take(ALICE, 3, 1, "obj", 5 * 65000)
    assert isinstance(joined, memoryview) and bytes(joined) == b"".join(pieces)
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
    assert written == [joined.obj]  # one write, straight from the joined buffer
    assert space.read_run(slots[0], 79) == bytes(joined[: 79 * 4096])


def test_a_gap_or_a_short_stage_is_not_committed() -> None:
    area = StagingArea(Clock())
    area.put(ALICE, 1, 1, "obj", 0, b"abcd")
    area.put(ALICE, 1, 1, "obj", 8, b"ijkl")
    with pytest.raises(NotStaged, match="4 contiguous bytes, not 12"):
        area.take(ALICE, 1, 1, "obj", 12)
    with pytest.raises(NotStaged):
        area.take(ALICE, 1, 1, "obj", 3)  # not what was staged either


def test_stages_belong_to_their_client_and_object() -> None:
    area = StagingArea(Clock())
    area.put(ALICE, 1, 1, "obj", 0, b"data")
    with pytest.raises(NotStaged):
        area.take(BOB, 1, 1, "obj", 4)
    with pytest.raises(NotStaged):
        area.take(("alice", 2), 1, 1, "obj", 4)  # another process of the same client
    with pytest.raises(InvalidRequest, match="another object"):
        area.take(ALICE, 1, 1, "other", 4)
    with pytest.raises(InvalidRequest, match="another object"):
        area.put(ALICE, 1, 2, "obj", 4, b"more")


def test_limits_per_stage_and_per_daemon() -> None:
    area = StagingArea(Clock(), budget=10, max_stage=8)
    with pytest.raises(InvalidRequest) as big:
        area.put(ALICE, 1, 1, "obj", 4, b"12345")
    assert big.value.code == Code.EFBIG
    area.put(ALICE, 1, 1, "obj", 0, b"12345678")
    with pytest.raises(StagingFull):
        area.put(BOB, 2, 1, "obj", 0, b"123")
    area.release(ALICE, 1, done=True)  # never taken: dropping it is harmless
    area.put(BOB, 2, 1, "obj", 0, b"123")
    assert area.held == 3


def test_untouched_stages_expire_but_not_while_committing() -> None:
    clock = Clock()
    area = StagingArea(clock, ttl=30.0)
    area.put(ALICE, 1, 1, "a", 0, b"x")
    area.put(ALICE, 2, 1, "b", 0, b"y")
    area.take(ALICE, 2, 1, "b", 1)  # its commit is under way
    clock.now += 31
    area.sweep(clock.now)
    assert len(area) == 1 and area.held == 1
    with pytest.raises(NotStaged):
        area.take(ALICE, 1, 1, "a", 1)
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
