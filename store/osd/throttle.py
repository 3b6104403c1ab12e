"""Recovery throttling: how many backfills a daemon joins at once, and how fast it pushes.

Theory of operation
-------------------
Recovering a member from the PG log moves a few objects and runs at once. A *backfill* —
comparing whole PGs because the log does not reach back far enough — can move a disk's
worth of data, so, as in Ceph, a daemon takes part in at most ``max_backfills`` of them at a
time, as the primary that pushes and as the member that receives:

- the primary takes one of its own slots (``local``), then asks the member for one of its
  slots (peer op ``recovery_reserve``); if the member has none free, the primary gives its
  own slot back and tries again a little later, so two daemons waiting on each other never
  deadlock;
- the member grants a slot per (pool, pg, primary) and forgets a grant that is neither
  released nor renewed (each push renews it) for ``RESERVATION_TTL`` seconds — a primary
  that died does not hold a slot for ever.

Every push of recovered data also spends tokens of a per-daemon bucket filled at
``recovery_max_rate`` MB/s (0: no limit), so recovery leaves bandwidth to clients.

``TokenBucket`` and ``Reservations`` are free of I/O; ``RecoveryThrottle`` is the trio shell.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from store.errors import StoreError

log = logging.getLogger("store.osd")

RESERVATION_TTL = 60.0
RETRY_RESERVATION = 1.0  # seconds between asks for a member's slot


@dataclass
class TokenBucket:
    rate: float  # bytes per second
    burst: float  # bytes that may go at once after a quiet time
    tokens: float = 0.0
    at: float | None = None

    def delay_for(self, nbytes: int, now: float) -> float:
        """Spend `nbytes` (going into debt if need be); seconds to wait before sending."""
        if self.at is None:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= nbytes
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


Key = tuple[int, int, int]  # pool, pg, primary


@dataclass
class Reservations:
    capacity: int
    ttl: float = RESERVATION_TTL
    held: dict[Key, float] = field(default_factory=dict)  # key -> lapses at

    def reserve(self, key: Key, now: float) -> bool:
        self._expire(now)
        if key in self.held or len(self.held) < self.capacity:
            self.held[key] = now + self.ttl
            return True
        return False

    def renew(self, pool: int, pg: int, now: float) -> None:
        """A push for the PG arrived: its backfill is alive."""
        for key in self.held:
            if key[:2] == (pool, pg):
                self.held[key] = now + self.ttl

    def release(self, key: Key) -> None:
        self.held.pop(key, None)

    def _expire(self, now: float) -> None:
        for key, lapses in list(self.held.items()):
            if now > lapses:
                del self.held[key]


class RecoveryThrottle:
    def __init__(
        self,
        max_backfills: int,
        max_rate_mb: float,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.local = trio.Semaphore(max_backfills)
        self.remote = Reservations(max_backfills)
        self.bucket = (
            # A fifth of a second's worth at once; a bigger object goes into debt.
            TokenBucket(max_rate_mb * 1e6, burst=max(64 * 1024, max_rate_mb * 2e5))
            if max_rate_mb > 0
            else None
        )
        self.clock = clock
        self.waiting = 0  # backfills waiting for a slot (ours or the member's)

    async def spend(self, nbytes: int) -> None:
        if self.bucket is not None:
            delay = self.bucket.delay_for(nbytes, self.clock())
            if delay > 0:
                await trio.sleep(delay)

    @asynccontextmanager
    async def backfill(self, conn: Any, pool: int, pg: int, primary: int) -> AsyncIterator[None]:
        """Hold our slot and the member's (on `conn`) for one backfill."""
        args = {"pool": pool, "pg": pg, "from": primary}
        self.waiting += 1
        try:
            while True:
                await self.local.acquire()
                try:
                    granted = await conn.call("recovery_reserve", args, timeout=15)
                except BaseException:
                    self.local.release()
                    raise
                if isinstance(granted, dict) and granted.get("granted") is True:
                    break
                self.local.release()
                await trio.sleep(RETRY_RESERVATION)
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.local.release()
            with trio.move_on_after(5, shield=True):
                try:
                    await conn.call("recovery_release", args, timeout=5)
                except (StoreError, OSError) as exc:
                    log.debug("releasing the backfill slot of %d.%x: %s", pool, pg, exc)
