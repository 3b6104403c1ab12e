"""A daemon killed with -9 while writes go on catches up when it returns: by replaying the
PG log when the log covers what it missed, by backfill (the whole PG, listed) when not.

Both tests first write a *cold* set of objects that is never touched again, then write
only a few *hot* objects while the daemon is away. What the returning daemon then receives
tells the two paths apart: log replay moves only hot objects, so fewer objects than the
writes made while it was away; backfill moves every object of its PGs, cold ones included
(it is counted by the daemon's ``store_osd_peer_ops`` metric: states pushed to it as a
replica, pulled by it as a primary).
"""

from __future__ import annotations

import re

import trio

from store.client.api import Client
from store.placement import pg_of
from tests.chaos.checks import CLIENT_TIMEOUT, POOL, check_healed, kill, names_per_pg
from tests.chaos.conftest import ChaosCluster, ChaosFactory
from tests.chaos.ledger import Ledger
from tests.chaos.observe import metric, scrape, wait_for, wait_osd
from tests.chaos.writer import Writer, write_objects

COLD = 160  # objects written before the kill and never again
VICTIM = 1


def recovery_transfers(cluster: ChaosCluster, osd: int) -> float:
    """Object states a daemon received since it started: pushed to it, or pulled by it."""
    text = scrape(cluster, f"osd.{osd}")
    return metric(text, "store_osd_peer_ops", kind="recovery", direction="received") + metric(
        text, "store_osd_peer_ops", kind="recovery", direction="pulled"
    )


async def test_a_daemon_back_soon_catches_up_from_the_log(chaos_cluster: ChaosFactory) -> None:
    cluster = chaos_cluster(3, size=3, min_size=2, pg_num=8, metrics=True)
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        ledger = Ledger(client.max_piece)
        await write_objects(client, POOL, ledger, [f"cold-{i:04d}" for i in range(COLD)], 8192)
        writer = Writer(client, POOL, ledger, names=names_per_pg(client, "hot", 2), seed=1)
        async with writer.running():
            await writer.wait_acked(10)
            await kill(cluster, VICTIM)
            attempts_before_kill = ledger.attempts
            await wait_osd(cluster, VICTIM, up=False, timeout=15)
            await writer.wait_acked(40)  # writes go on with two copies of three
            cluster.start_osd(VICTIM)
            await wait_osd(cluster, VICTIM, up=True, timeout=15)
            await writer.wait_acked(20)
        attempts_since_kill = ledger.attempts - attempts_before_kill
        await check_healed(cluster, client, ledger, writer)
        assert writer.stats.reads > 0

    transfers = await trio.to_thread.run_sync(recovery_transfers, cluster, VICTIM)
    # Log replay moves at most one object state per write it missed, and never the cold
    # objects (a backfill would move all COLD of them again).
    assert 0 < transfers < COLD, transfers
    assert transfers <= attempts_since_kill, (transfers, attempts_since_kill)
    # The primaries say so too: each PG's round moved its two hot objects at most.
    recovered = [
        int(n)
        for i in range(3)
        if i != VICTIM
        for n in re.findall(rf"osd\.{VICTIM} recovered \((\d+) objects\)", cluster.log(f"osd.{i}"))
    ]
    assert recovered and max(recovered) <= 2, recovered


async def test_a_daemon_away_past_the_log_is_backfilled(chaos_cluster: ChaosFactory) -> None:
    log_entries = 20
    cluster = chaos_cluster(
        3,
        size=3,
        min_size=2,
        pg_num=8,
        metrics=True,
        osd_extra=["--pg-log-entries", str(log_entries)],
    )
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        ledger = Ledger(client.max_piece)
        await write_objects(client, POOL, ledger, [f"cold-{i:04d}" for i in range(COLD)], 8192)
        names = names_per_pg(client, "hot", 2)
        pool = client.pool(POOL)
        # Small objects: this scenario needs many writes, not many bytes.
        writer = Writer(client, POOL, ledger, names=names, seed=2, sizes=(4096, 16384))
        async with writer.running():
            await writer.wait_acked(10)
            await kill(cluster, VICTIM)
            await wait_osd(cluster, VICTIM, up=False, timeout=15)
            since = {name: ledger.attempts_on(name) for name in names}

            async def every_log_overflowed() -> bool:
                per_pg = [0] * pool.pg_num
                for name in names:
                    per_pg[pg_of(pool, name)] += ledger.attempts_on(name) - since[name]
                return min(per_pg) > log_entries + 5

            await wait_for(every_log_overflowed, "every PG to log past its log's length", 90)
            cluster.start_osd(VICTIM)
            await wait_osd(cluster, VICTIM, up=True, timeout=15)
            await writer.wait_acked(20)
        await check_healed(cluster, client, ledger, writer)

    transfers = await trio.to_thread.run_sync(recovery_transfers, cluster, VICTIM)
    # Every PG's log moved past what the daemon had: each of its PGs was listed whole, so
    # every cold object (all on it, with three copies on three daemons) came again.
    assert transfers >= COLD, transfers
