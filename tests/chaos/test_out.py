"""A daemon that stays down is marked out by the master; the other daemons copy its data
among themselves, and take it back when it returns."""

from __future__ import annotations

import trio

from store.client.api import Client
from store.placement import acting_set
from tests.chaos.checks import CLIENT_TIMEOUT, POOL, check_healed, kill
from tests.chaos.conftest import ChaosFactory
from tests.chaos.ledger import Ledger
from tests.chaos.observe import replica_disagreements, wait_clean, wait_osd
from tests.chaos.writer import Writer, verify, write_objects

DOWN_OUT_INTERVAL = 3.0
VICTIM = 2


async def test_a_daemon_down_past_the_interval_goes_out_and_its_data_is_copied(
    chaos_cluster: ChaosFactory,
) -> None:
    cluster = chaos_cluster(
        4,
        size=3,
        min_size=2,
        pg_num=16,
        master_extra=["--down-out-interval", str(DOWN_OUT_INTERVAL)],
    )
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        ledger = Ledger(client.max_piece)
        await write_objects(client, POOL, ledger, [f"base-{i:03d}" for i in range(64)], 20000)
        writer = Writer(client, POOL, ledger, prefix="obj", max_objects=120, seed=3)
        async with writer.running():
            await writer.wait_acked(10)
            await kill(cluster, VICTIM)
            # Down after the grace, out DOWN_OUT_INTERVAL later, by the master alone.
            await wait_osd(cluster, VICTIM, up=False, in_=False, timeout=30)
            await writer.wait_acked(10)
            # Re-replicated: every PG clean again, on the three others (while the victim
            # is still down, so the status is a warning, not OK: the PG states say it).
            await wait_clean(cluster, timeout=60)
            await writer.wait_acked(10)

        # With the victim still away: three copies of everything on the other three.
        pool = client.pool(POOL)
        m = client.map
        assert all(
            VICTIM not in acting_set(m, pool.id, pg) and len(acting_set(m, pool.id, pg)) == 3
            for pg in range(pool.pg_num)
        )
        report = await verify(client, POOL, ledger)
        assert not report.problems, report.summary()
        disagreements = await trio.to_thread.run_sync(
            replica_disagreements, cluster, m, pool.id, ledger.names()
        )
        assert not disagreements, "\n".join(disagreements[:40])

        # It returns (and is taken in: by itself at boot, or by `store osd in`).
        async with writer.running():
            cluster.start_osd(VICTIM)
            await wait_osd(cluster, VICTIM, up=True, timeout=15)
            await trio.to_thread.run_sync(cluster.cli, "osd", "in", str(VICTIM))
            await wait_osd(cluster, VICTIM, up=True, in_=True, timeout=15)
            await writer.wait_acked(20)
        await check_healed(cluster, client, ledger, writer)
        assert any(VICTIM in acting_set(client.map, pool.id, pg) for pg in range(pool.pg_num))
