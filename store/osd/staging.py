"""Staged writes: the pieces of one large write, held by the primary until it is committed.

A write larger than one datagram used to be as many replicated writes as it has pieces,
each ordered, applied and forwarded on its own. Instead the client *stages* the pieces
with the PG's primary (each a datagram acknowledged once held, with nothing written; see
``store.osd.stage_pieces``), then sends one request whose ``staged`` operation names them;
the primary makes them a single ``write`` (or ``write_full``) and applies and replicates it
like any other: one log entry, one transaction per member, one forward per replica, and
the whole extent lands atomically.

Each piece is one datagram of raw data (``store.wire.stages``) that says where it belongs:
the stage's token, its offset and the size of the whole stage. The first piece of a stage
makes its buffer, the size of the stage and on a page boundary, and every piece is opened
(decrypted) straight into its place there: when the commit comes the buffer is the data,
written by the data file with O_DIRECT as it is, never joined or copied. A place is filled
once: a piece sent again is only checked (opened aside) and answered as the first was, and
pieces that overlap without being the same are refused.

Staged pieces live in memory only. They are keyed by the client's identity and instance
and the token, so no one else can commit or read them; a stage belongs to one PG of one
pool, and is committed only by a write of an object of that PG. Stages untouched for
``ttl`` seconds are forgotten, and so is everything when the daemon restarts: a commit that
finds its stage gone is answered ENOTSTAGED, and the client stages again (to whichever
daemon is primary by then). The area has a byte budget, spent by a stage's whole size when
its first piece arrives; a stage that does not fit is answered EAGAIN and sent again later.

This module does no I/O; the clock is passed in.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

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


class Stage:
    __slots__ = ("buffer", "committing", "filled", "held", "pg", "pool", "starts", "touched")

    def __init__(self, pool: int, pg: int, size: int, now: float) -> None:
        self.pool = pool
        self.pg = pg
        self.buffer = page_aligned(size)  # filled piece by piece, in place
        self.filled: dict[int, int] = {}  # offset -> length of the pieces held
        self.starts: list[int] = []  # their offsets, in order
        self.held = 0  # bytes of the pieces held
        self.touched = now
        self.committing = 0  # commits under way that use it

    @property
    def size(self) -> int:
        return len(self.buffer)


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
        self.held = 0  # bytes of the buffers of all stages
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._stages)

    def target(
        self, owner: Owner, token: int, pool: int, pg: int, offset: int, length: int, size: int
    ) -> tuple[memoryview | None, bool]:
        """Where to open a piece: its place in the stage's buffer, or None when this very
        piece is held already (check it aside, answer as before); and whether the piece
        made the stage (``forget`` it if the piece then fails its tag). Call ``fill``
        once the piece proved authentic."""
        now = self._clock()
        self.sweep(now)
        if not 0 < size <= self.max_stage:
            raise InvalidRequest(f"a stage holds 1 to {self.max_stage} bytes", Code.EFBIG)
        if not (length > 0 and 0 <= offset <= size - length):
            raise InvalidRequest(f"a piece of {length} bytes at {offset} is not within {size}")
        key = (owner, token)
        stage = self._stages.get(key)
        created = stage is None
        if stage is None:
            if self._per_owner.get(owner, 0) >= MAX_STAGES_PER_CLIENT:
                raise StagingFull(f"client has {MAX_STAGES_PER_CLIENT} stages open")
            if self.held + size > self.budget:
                raise StagingFull(f"{self.held} bytes of writes are staged already")
            stage = self._stages[key] = Stage(pool, pg, size, now)
            self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
            self.held += size
        elif (stage.pool, stage.pg, stage.size) != (pool, pg, size):
            raise InvalidRequest("this stage token belongs to another stage")
        stage.touched = now
        held = stage.filled.get(offset)
        if held is not None:
            if held != length:
                raise InvalidRequest(f"a piece at {offset} overlaps one held")
            return None, False
        at = bisect.bisect(stage.starts, offset)
        before = stage.starts[at - 1] if at else None
        after = stage.starts[at] if at < len(stage.starts) else None
        if (before is not None and before + stage.filled[before] > offset) or (
            after is not None and offset + length > after
        ):
            raise InvalidRequest(f"a piece at {offset} overlaps one held")
        return stage.buffer[offset : offset + length], created

    def fill(self, owner: Owner, token: int, offset: int, length: int) -> None:
        """The piece ``target`` placed proved authentic: its place is held from now on."""
        stage = self._stages.get((owner, token))
        if stage is None or offset in stage.filled:
            return
        stage.filled[offset] = length
        bisect.insort(stage.starts, offset)
        stage.held += length

    def forget(self, owner: Owner, token: int) -> None:
        """Drop a stage its first piece made, when that piece failed its tag."""
        key = (owner, token)
        stage = self._stages.get(key)
        if stage is not None and not stage.filled and not stage.committing:
            self._drop(key, stage)

    def take(self, owner: Owner, token: int, pool: int, pg: int, length: int) -> memoryview:
        """The staged bytes, whole: the stage's buffer itself (from the start of a page).
        The stage stays until ``release`` (a commit that must be retried needs it again)."""
        stage = self._stages.get((owner, token))
        if stage is None:
            raise NotStaged("nothing is staged under this token: stage the data again")
        if (stage.pool, stage.pg) != (pool, pg):
            raise InvalidRequest("this stage token belongs to another object")
        if not 0 <= length <= min(self.max_stage, MAX_OBJECT_SIZE):
            raise InvalidRequest(f"a staged write is 0 to {self.max_stage} bytes", Code.EFBIG)
        if length != stage.size:
            raise InvalidRequest(f"the stage is of {stage.size} bytes, not {length}")
        if stage.held != stage.size:
            raise NotStaged(
                f"the stage holds {stage.held} of its {stage.size} bytes: stage the data again"
            )
        stage.touched = self._clock()
        stage.committing += 1
        return stage.buffer

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
