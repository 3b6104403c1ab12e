"""The master killed and restarted while a daemon is being recovered: recovery is between
daemons and finishes; the restarted master learns the state again from their reports."""

from __future__ import annotations

import re
import signal
import time
from datetime import datetime

import trio

from store.client.api import Client
from store.errors import ClientTimeout
from tests.chaos.checks import CLIENT_TIMEOUT, POOL, check_healed, kill
from tests.chaos.conftest import GRACE, ChaosCluster, ChaosFactory
from tests.chaos.ledger import Ledger, content
from tests.chaos.observe import status, wait_for, wait_osd
from tests.chaos.writer import Writer, write_objects

VICTIM = 1
LOG_ENTRIES = 20  # short logs: the victim is backfilled, which takes a while


async def test_recovery_finishes_across_a_restart_of_the_master(
    chaos_cluster: ChaosFactory,
) -> None:
    cluster = chaos_cluster(
        3, size=3, min_size=2, pg_num=8, osd_extra=["--pg-log-entries", str(LOG_ENTRIES)]
    )
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        ledger = Ledger(client.max_piece)
        await write_objects(client, POOL, ledger, [f"base-{i:03d}" for i in range(300)], 150_000)
        await kill(cluster, VICTIM)
        await wait_osd(cluster, VICTIM, up=False, timeout=15)
        # Enough writes in every PG to leave the victim's log position behind.
        writer = Writer(client, POOL, ledger, prefix="obj", max_objects=60, seed=8)
        async with writer.running():
            await writer.wait_acked(8 * (LOG_ENTRIES + 10))

        def recoveries_begun() -> int:
            return sum(
                cluster.log(f"osd.{i}").count(f"recovery of osd.{VICTIM} started")
                for i in range(3)
                if i != VICTIM
            )

        begun = recoveries_begun()

        async def recovering() -> bool:
            return recoveries_begun() > begun

        # Writes go on throughout, from a client that was connected before the restart.
        async with writer.running():
            cluster.start_osd(VICTIM)
            await wait_for(recovering, "the victim's recovery to begin", 30, every=0.05)
            killed_at = time.time()
            await trio.to_thread.run_sync(cluster.kill, "master", signal.SIGKILL)
            await trio.sleep(1)
            await trio.to_thread.run_sync(cluster.start_master)
            await writer.wait_acked(20)

    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as fresh:
        await check_healed(cluster, fresh, ledger, writer)
    # Some of the victim's PGs were still being recovered when the master died.
    finished = [
        stamp
        for i in range(3)
        if i != VICTIM
        for stamp in re.findall(
            rf"^(\S+ \S+) .*recovery of osd\.{VICTIM} finished", cluster.log(f"osd.{i}"), re.M
        )
    ]
    assert any(log_time(stamp) > killed_at for stamp in finished), finished


def log_time(stamp: str) -> float:
    """A daemon's log timestamp ('2026-01-02 03:04:05,678', local time) as epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_client_follows_the_maps_of_a_restarted_master(chaos_cluster: ChaosFactory) -> None:
    """A client connected before the master restarts (a gateway runs for months) must
    learn the maps made after it: here, that a daemon died and its PGs have new primaries.

    Run by trio.run here rather than as a trio test, so that a wrong result fails as a
    plain AssertionError."""
    cluster = chaos_cluster(3, size=3, min_size=2, pg_num=8)
    seen, made, write_error = trio.run(_client_across_a_master_restart, cluster)
    assert seen >= made, f"the client's map is at epoch {seen}, the master's at {made}"
    assert write_error is None, write_error


async def _client_across_a_master_restart(cluster: ChaosCluster) -> tuple[int, int, str | None]:
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        name = next(
            f"led-by-{VICTIM}-{i}"
            for i in range(1000)
            if client.locate(POOL, f"led-by-{VICTIM}-{i}")["primary"] == VICTIM
        )
        await client.write_full(POOL, name, content(name, 1, 5000))
        await trio.to_thread.run_sync(cluster.kill, "master", signal.SIGKILL)
        await trio.to_thread.run_sync(cluster.start_master)
        await kill(cluster, VICTIM)
        await wait_osd(cluster, VICTIM, up=False, timeout=15)
        summary = await status(cluster)
        assert summary is not None
        made = int(summary["epoch"])
        with trio.move_on_after(2 * GRACE):  # maps are pushed as they are made
            while client.map.epoch < made:
                await client.master.wait_for_map_change(0.1)
        if client.map.epoch < made:
            return client.map.epoch, made, None
        try:
            await client.write_full(POOL, name, content(name, 2, 5000))
        except ClientTimeout as exc:
            return client.map.epoch, made, str(exc)
        return client.map.epoch, made, None
