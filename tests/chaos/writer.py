"""A writer that keeps a cluster busy and a verifier that checks what it was told.

``Writer.run`` (a trio task) keeps a few workers writing whole objects — new ones and
overwrites, sizes from 4 KiB to 256 KiB — and reading some back, through one
``store.client.api.Client``. Every attempt goes through a :class:`Ledger` first, so an
attempt cut off by cancellation is already recorded as unanswered. One operation at a time
per object: a read never races a write of the same object, and an attempt ends before the
next of its object begins. Reads during the run are judged at once; ``verify`` reads
everything at the end.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from store.client.api import Client
from store.errors import ClientTimeout, Code, RemoteError, StoreError
from tests.chaos.ledger import Ledger, content

SMALLEST_OBJECT = 4 << 10
LARGEST_OBJECT = 256 << 10


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups; a parallel write of pieces raises its
    pieces' errors as a group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def failure_of(exc: BaseException) -> StoreError | OSError | None:
    """The store or socket error an operation failed with; None for anything else (a bug
    of the test or the client, which must not pass for a cluster failure)."""
    leaves = leaf_errors(exc)
    failures = [e for e in leaves if isinstance(e, StoreError | OSError)]
    return failures[0] if len(failures) == len(leaves) else None


def is_refusal(exc: BaseException) -> bool:
    """A write refused because too few copies are up: EDEGRADED, or the client's timeout
    after retrying one (its message names the last answer)."""
    if isinstance(exc, RemoteError):
        return exc.code == Code.EDEGRADED
    return isinstance(exc, ClientTimeout) and ("EDEGRADED" in str(exc) or "min_size" in str(exc))


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return exc.code.name
    return type(exc).__name__


@dataclass
class WriterStats:
    refused: int = 0  # writes refused below min_size
    reads: int = 0  # reads judged during the run
    reads_unavailable: Counter[str] = field(default_factory=Counter)
    wrong_reads: list[str] = field(default_factory=list)
    matches: Counter[str] = field(default_factory=Counter)  # verdicts of reads, by kind


class Writer:
    """Whole-object writes and read-backs against one pool, recorded in ``ledger``.

    A write makes a new object with probability ``new_fraction`` (while fewer than
    ``max_objects`` exist), else overwrites one. New objects take the next of ``names``
    when given (then at most all of them), else are named ``{prefix}-NNNNN``.
    """

    def __init__(
        self,
        client: Client,
        pool: str,
        ledger: Ledger | None = None,
        *,
        seed: int = 0,
        workers: int = 4,
        names: Sequence[str] | None = None,
        prefix: str = "obj",
        max_objects: int = 1000,
        new_fraction: float = 0.3,
        read_fraction: float = 0.25,
        sizes: tuple[int, int] = (SMALLEST_OBJECT, LARGEST_OBJECT),
    ) -> None:
        self.client, self.pool = client, pool
        self.ledger = ledger if ledger is not None else Ledger(client.max_piece)
        self.seed, self.workers = seed, workers
        self.names = list(names) if names is not None else None
        self.prefix = prefix
        self.max_objects = (
            min(max_objects, len(self.names)) if self.names is not None else max_objects
        )
        self.new_fraction, self.read_fraction = new_fraction, read_fraction
        self.sizes = sizes
        self.stats = WriterStats()
        self._busy: set[str] = set()
        self._made = 0
        self._progress = trio.Event()

    # --- running ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Writer]:
        """Write while the body runs; cancelled when it ends."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run)
            try:
                yield self
            finally:
                nursery.cancel_scope.cancel()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for worker in range(self.workers):
                nursery.start_soon(self._work, random.Random(f"{self.seed}/{worker}"))

    async def wait_acked(self, more: int, timeout: float = 60.0) -> None:
        """Wait until ``more`` further writes are acknowledged (the writes go on)."""
        target = self.ledger.acked + more
        with trio.fail_after(timeout):
            while self.ledger.acked < target:
                await self._progress.wait()

    async def _work(self, rng: random.Random) -> None:
        while True:
            reading = rng.random() < self.read_fraction
            name = self._choose(rng, reading)
            if name is None:
                await trio.sleep(0.01)
                continue
            self._busy.add(name)
            try:
                if reading:
                    await self._read(name)
                else:
                    await self._write(name, rng)
            finally:
                self._busy.discard(name)
            await trio.sleep(0)

    def _choose(self, rng: random.Random, reading: bool) -> str | None:
        if reading:
            known = [n for n in self.ledger.objects if n not in self._busy]
            return rng.choice(known) if known else None
        if self._made < self.max_objects and (not self._made or rng.random() < self.new_fraction):
            self._made += 1
            return self._name(self._made - 1)
        free = [n for n in map(self._name, range(self._made)) if n not in self._busy]
        return rng.choice(free) if free else None

    def _name(self, i: int) -> str:
        return self.names[i] if self.names is not None else f"{self.prefix}-{i:05d}"

    def _size(self, rng: random.Random) -> int:
        lo, hi = self.sizes
        # Log-uniform: as many small objects as large ones, and sizes off block bounds.
        return min(hi, int(math.exp(rng.uniform(math.log(lo), math.log(hi)))))

    async def _write(self, name: str, rng: random.Random) -> None:
        attempt = self.ledger.begin_write(name, self._size(rng))
        try:
            await self.client.write_full(self.pool, name, attempt.content(name))
        except Exception as exc:
            failure = failure_of(exc)
            if failure is None:
                raise
            if is_refusal(failure):
                self.stats.refused += 1
                self.ledger.unanswered_write("refused below min_size")
            else:
                self.ledger.unanswered_write(reason_of(failure))
            return
        self.ledger.acknowledged(name, attempt)
        self._progress.set()
        self._progress = trio.Event()

    async def _read(self, name: str) -> None:
        outcome = await read_object(self.client, self.pool, name)
        if outcome.unavailable is not None:
            self.stats.reads_unavailable[outcome.unavailable] += 1
            return
        self.stats.reads += 1
        problem, match = outcome.judge(self.ledger, name)
        if problem is not None:
            self.stats.wrong_reads.append(problem)
        else:
            self.stats.matches[match] += 1


@dataclass(frozen=True)
class ReadOutcome:
    """A read: its bytes (None: no such object), or why the cluster did not serve it, or
    the error of stored data that failed its checksum."""

    data: bytes | None = None
    unavailable: str | None = None
    damaged: str | None = None

    def judge(self, ledger: Ledger, name: str) -> tuple[str | None, str]:
        """(problem or None, kind of allowed content)."""
        if self.damaged is not None:
            return f"{name}: read failed its checksum: {self.damaged}", ""
        verdict = ledger.judge(name, self.data)
        return verdict.problem, verdict.match or ""


async def read_object(client: Client, pool: str, name: str) -> ReadOutcome:
    try:
        return ReadOutcome(await client.read(pool, name))
    except Exception as exc:
        failure = failure_of(exc)
        if failure is None:
            raise
        if isinstance(failure, RemoteError) and failure.code == Code.ENOENT:
            return ReadOutcome(None)
        if isinstance(failure, RemoteError) and failure.code == Code.EIO:
            return ReadOutcome(damaged=failure.message)
        return ReadOutcome(unavailable=reason_of(failure))


@dataclass
class VerifyReport:
    checked: int
    matches: Counter[str]
    problems: list[str]
    unavailable: Counter[str]

    def summary(self) -> str:
        lines = [
            f"{self.checked} objects checked: {dict(self.matches)}; "
            f"{len(self.problems)} wrong; unavailable reads: {dict(self.unavailable)}"
        ]
        lines += self.problems[:40]
        if len(self.problems) > 40:
            lines.append(f"... and {len(self.problems) - 40} more")
        return "\n".join(lines)


async def verify(
    client: Client, pool: str, ledger: Ledger, *, attempts: int = 5, parallel: int = 8
) -> VerifyReport:
    """Read every object of ``ledger`` and judge it. A read the cluster does not serve is
    tried again (``attempts`` times in all); one that never succeeds is a problem too."""
    report = VerifyReport(0, Counter(), [], Counter())
    limit = trio.CapacityLimiter(parallel)

    async def one(name: str) -> None:
        async with limit:
            for _ in range(attempts):
                outcome = await read_object(client, pool, name)
                if outcome.unavailable is None:
                    break
                report.unavailable[outcome.unavailable] += 1
                await trio.sleep(0.5)
            else:
                report.problems.append(f"{name}: not readable after {attempts} attempts")
                return
        report.checked += 1
        problem, match = outcome.judge(ledger, name)
        if problem is not None:
            report.problems.append(problem)
        else:
            report.matches[match] += 1

    async with trio.open_nursery() as nursery:
        for name in ledger.names():
            nursery.start_soon(one, name)
    report.problems.sort()
    return report


async def write_objects(
    client: Client, pool: str, ledger: Ledger, names: Sequence[str], size: int, parallel: int = 8
) -> None:
    """Write each of ``names`` once, every write acknowledged (setup, on a healthy cluster)."""
    limit = trio.CapacityLimiter(parallel)

    async def one(name: str) -> None:
        async with limit:
            attempt = ledger.begin_write(name, size)
            await client.write_full(pool, name, content(name, attempt.generation, size))
            ledger.acknowledged(name, attempt)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
