"""Recovery throttling: the token bucket, backfill slots, and how a primary waits for one."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from store.errors import RemoteError
from store.osd.throttle import RecoveryThrottle, Reservations, TokenBucket


def test_the_bucket_lets_a_burst_through_then_paces_to_the_rate() -> None:
    bucket = TokenBucket(rate=1000.0, burst=500.0)
    assert bucket.delay_for(500, now=0.0) == 0.0  # the burst
    assert bucket.delay_for(250, now=0.0) == pytest.approx(0.25)  # 250 bytes of debt
    assert bucket.delay_for(250, now=0.25) == pytest.approx(0.25)
    # A quiet second refills it, up to the burst only.
    assert bucket.delay_for(500, now=10.0) == 0.0
    assert bucket.delay_for(1, now=10.0) == pytest.approx(0.001)


def test_over_time_the_bucket_sends_at_its_rate() -> None:
    bucket = TokenBucket(rate=1e6, burst=1e5)
    now, sent = 0.0, 0
    while now < 10.0:
        now += bucket.delay_for(65536, now)
        sent += 65536
    assert sent / now == pytest.approx(1e6, rel=0.05)


def test_reservations_up_to_capacity_renewed_released_and_lapsing() -> None:
    r = Reservations(capacity=2, ttl=10.0)
    assert r.reserve((1, 0, 5), now=0.0)
    assert r.reserve((1, 0, 5), now=0.0)  # the same backfill asking again
    assert r.reserve((1, 1, 6), now=0.0)
    assert not r.reserve((1, 2, 7), now=1.0)  # full
    r.release((1, 1, 6))
    assert r.reserve((1, 2, 7), now=1.0)
    r.renew(1, 0, now=9.0)  # a push for pg 1.0 arrived
    assert not r.reserve((1, 3, 8), now=10.5)  # 1.2 (granted at 1) still stands
    assert r.reserve((1, 3, 8), now=11.5)  # 1.2 lapsed at 11; 1.0 was renewed until 19
    assert not r.reserve((1, 4, 8), now=12.0)


class _Member:
    """The far side of a backfill: refuses a number of times, then grants."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls: list[str] = []

    async def call(self, op: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
        self.calls.append(op)
        if op == "recovery_reserve":
            if self.refusals:
                self.refusals -= 1
                return {"granted": False}
            return {"granted": True}
        return {}


async def test_a_backfill_waits_for_the_members_slot_without_holding_ours(
    autojump_clock: trio.testing.MockClock,
) -> None:
    throttle = RecoveryThrottle(max_backfills=1, max_rate_mb=0)
    busy = _Member(refusals=2)
    free = _Member(refusals=0)
    order: list[str] = []

    async def backfill(member: _Member, name: str) -> None:
        async with throttle.backfill(member, 1, 0, 0):
            order.append(f"{name} in")
            await trio.sleep(0.5)
            order.append(f"{name} out")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(backfill, busy, "busy")
        await trio.sleep(0.01)
        nursery.start_soon(backfill, free, "free")
    # While the busy member refused, our only slot went to the other backfill.
    assert order == ["free in", "free out", "busy in", "busy out"]
    assert busy.calls == ["recovery_reserve"] * 3 + ["recovery_release"]
    assert throttle.waiting == 0


async def test_a_failed_reservation_gives_our_slot_back() -> None:
    class Broken:
        async def call(self, op: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
            raise RemoteError(4, "no")  # type: ignore[arg-type]

    throttle = RecoveryThrottle(max_backfills=1, max_rate_mb=0)
    with pytest.raises(RemoteError):
        async with throttle.backfill(Broken(), 1, 0, 0):
            pass
    member = _Member(refusals=0)
    async with throttle.backfill(member, 1, 0, 0):
        pass
    assert member.calls == ["recovery_reserve", "recovery_release"]


def test_spending_waits_only_with_a_rate() -> None:
    async def main() -> float:
        throttle = RecoveryThrottle(max_backfills=1, max_rate_mb=1.0)
        start = trio.current_time()
        for _ in range(10):
            await throttle.spend(1_000_000)
        return trio.current_time() - start

    clock = trio.testing.MockClock(autojump_threshold=0)
    elapsed = trio.run(main, clock=clock)
    assert elapsed == pytest.approx(10.0 - 0.2, rel=0.02)  # a burst of 0.2 s worth

    async def unlimited() -> float:
        throttle = RecoveryThrottle(max_backfills=1, max_rate_mb=0)
        await throttle.spend(10**12)
        return trio.current_time()

    assert trio.run(unlimited, clock=trio.testing.MockClock(autojump_threshold=0)) == 0.0
