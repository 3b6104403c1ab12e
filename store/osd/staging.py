"""Staged writes: the pieces of one large write, held by the primary until it is committed.

A write larger than one datagram used to be as many replicated writes as it has pieces,
each ordered, applied and forwarded on its own. Instead the client *stages* the pieces
with the PG's primary (each a datagram answered at once, with nothing written), then sends
one request whose ``staged`` operation names them; the primary joins them into a single
``write`` (or ``write_full``) and applies and replicates it like any other: one log entry,
one transaction per member, one forward per replica, and the whole extent lands
atomically.

Staged pieces live in memory only. They are keyed by the client's identity and instance
and a token the client picks, so no one else can commit or read them; a stage belongs to
one object of one pool. Stages untouched for ``ttl`` seconds are forgotten, and so is
everything when the daemon restarts: a commit that finds its stage gone is answered
ENOTSTAGED, and the client stages again (to whichever daemon is primary by then). The
area has a byte budget; a piece that does not fit is answered EAGAIN and sent again later.

This module does no I/O; the clock is passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from store.errors import Code
from store.malloc import page_aligned
from store.osd.ops import MAX_OBJECT_SIZE, InvalidRequest

MAX_STAGE_BYTES = 32 * 1024 * 1024  # one stage: the most one commit applies
STAGING_BUDGET = 512 * 1024 * 1024  # all stages of one daemon together
STAGE_TTL = 30.0  # seconds a stage lives without a new piece or a commit
MAX_STAGES_PER_CLIENT = 256

Owner = tuple[str, int]  # (client name, client instance)


class StagingFull(Exception):
    """The area's byte budget is spent: answer EAGAIN."""


class NotStaged(Exception):
    """No complete stage under that token (expired, never sent, or the daemon restarted)."""

    code = Code.ENOTSTAGED


@dataclass
class Stage:
    pool: int
    name: str
    pieces: dict[int, bytes] = field(default_factory=dict)
    size: int = 0  # bytes held
    touched: float = 0.0
    committing: int = 0  # commits under way that use it


class StagingArea:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        budget: int = STAGING_BUDGET,
        max_stage: int = MAX_STAGE_BYTES,
        ttl: float = STAGE_TTL,
    ) -> None:
        self._clock = clock
        self.budget, self.max_stage, self.ttl = budget, max_stage, ttl
        self._stages: dict[tuple[Owner, int], Stage] = {}
        self._per_owner: dict[Owner, int] = {}
        self.held = 0  # bytes in all stages
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._stages)

    def put(self, owner: Owner, token: int, pool: int, name: str, offset: int, data: bytes) -> None:
        """Hold one piece. A piece sent again replaces itself."""
        now = self._clock()
        self.sweep(now)
        if not 0 <= offset <= self.max_stage - len(data):
            raise InvalidRequest(
                f"a stage holds at most {self.max_stage} bytes: piece at {offset} is past it",
                Code.EFBIG,
            )
        key = (owner, token)
        stage = self._stages.get(key)
        if stage is None:
            if self._per_owner.get(owner, 0) >= MAX_STAGES_PER_CLIENT:
                raise StagingFull(f"client has {MAX_STAGES_PER_CLIENT} stages open")
            stage = self._stages[key] = Stage(pool, name)
            self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        elif (stage.pool, stage.name) != (pool, name):
            raise InvalidRequest("this stage token belongs to another object")
        old = stage.pieces.get(offset)
        grow = len(data) - (len(old) if old is not None else 0)
        if stage.size + grow > self.max_stage:
            raise InvalidRequest(f"a stage holds at most {self.max_stage} bytes", Code.EFBIG)
        if self.held + grow > self.budget:
            raise StagingFull(f"{self.held} bytes of writes are staged already")
        stage.pieces[offset] = data
        stage.size += grow
        self.held += grow
        stage.touched = now

    def take(
        self, owner: Owner, token: int, pool: int, name: str, length: int
    ) -> bytes | memoryview:
        """The staged bytes [0, length) of the stage, joined (from the start of a page);
        the stage stays until ``release`` (a commit that must be retried needs it again)."""
        stage = self._stages.get((owner, token))
        if stage is None:
            raise NotStaged("nothing is staged under this token: stage the data again")
        if (stage.pool, stage.name) != (pool, name):
            raise InvalidRequest("this stage token belongs to another object")
        if not 0 <= length <= min(self.max_stage, MAX_OBJECT_SIZE):
            raise InvalidRequest(f"a staged write is 0 to {self.max_stage} bytes", Code.EFBIG)
        parts, at = [], 0
        for offset in sorted(stage.pieces):
            if offset != at:
                break
            piece = stage.pieces[offset]
            parts.append(piece)
            at += len(piece)
        if at != length:
            raise NotStaged(
                f"the stage holds {at} contiguous bytes, not {length}: stage the data again"
            )
        stage.touched = self._clock()
        stage.committing += 1
        if len(parts) == 1:
            return parts[0]
        # Joined on a page boundary: the data file takes it with O_DIRECT as it is.
        joined = page_aligned(length)
        at = 0
        for piece in parts:
            joined[at : at + len(piece)] = piece
            at += len(piece)
        return joined

    def release(self, owner: Owner, token: int, *, done: bool) -> None:
        """A commit that took the stage is over; `done` drops the stage (the write is
        decided), otherwise it stays for the retry."""
        key = (owner, token)
        stage = self._stages.get(key)
        if stage is None:
            return
        stage.committing -= 1
        if done:
            self._drop(key, stage)

    def sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self.ttl, 5.0)
        for key, stage in list(self._stages.items()):
            if stage.committing <= 0 and now - stage.touched > self.ttl:
                self._drop(key, stage)

    def clear(self) -> None:
        for key, stage in list(self._stages.items()):
            self._drop(key, stage)

    def _drop(self, key: tuple[Owner, int], stage: Stage) -> None:
        if self._stages.pop(key, None) is None:
            return
        self.held -= stage.size
        owner = key[0]
        left = self._per_owner.get(owner, 1) - 1
        if left:
            self._per_owner[owner] = left
        else:
            self._per_owner.pop(owner, None)
