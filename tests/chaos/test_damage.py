"""Bytes flipped in a daemon's data file while a writer goes on (scenario 6): reads of the
damaged objects return the right bytes meanwhile, a deep scrub reports the bad copy, and
`store pg repair` replaces it. Auto-repair is off here, so that each step can be seen."""

from __future__ import annotations

import trio

from store.client.api import Client
from tests.chaos.checks import CLIENT_TIMEOUT, POOL, check_healed, names_per_pg
from tests.chaos.conftest import ChaosFactory
from tests.chaos.ledger import Ledger
from tests.chaos.writer import Writer, write_objects
from tests.cluster.test_scrub import BS, corrupt, pg_state, scrub, stored_block, wait_for_state

COLD = 48  # objects written once before the damage; the writer never touches them
SIZE = 3 * BS + 123


async def test_flipped_bytes_are_read_right_reported_and_repaired(
    chaos_cluster: ChaosFactory,
) -> None:
    cluster = chaos_cluster(3, size=3, min_size=2, pg_num=8, osd_extra=["--no-scrub-auto-repair"])
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        ledger = Ledger(client.max_piece)
        cold = [f"cold-{i:03d}" for i in range(COLD)]
        await write_objects(client, POOL, ledger, cold, SIZE)
        # One object damaged on a replica, one in another PG on its primary.
        replica_name = cold[0]
        on_replica = client.locate(POOL, replica_name)
        primary_name = next(n for n in cold[1:] if client.locate(POOL, n)["pg"] != on_replica["pg"])
        on_primary = client.locate(POOL, primary_name)
        replica_osd, primary_osd = on_replica["acting"][1], on_primary["primary"]
        good = {name: await client.read(POOL, name) for name in (replica_name, primary_name)}
        assert all(len(data) == SIZE for data in good.values())

        writer = Writer(client, POOL, ledger, names=names_per_pg(client, "hot", 2), seed=6)
        async with writer.running():
            await writer.wait_acked(10)
            await trio.to_thread.run_sync(corrupt, cluster, replica_osd, replica_name, 1)
            await trio.to_thread.run_sync(corrupt, cluster, primary_osd, primary_name, 0)

            # Reads meanwhile: the primary's copy of the first is intact; the second's is
            # damaged and replaced from a replica before the read is answered.
            assert await client.read(POOL, replica_name) == good[replica_name]
            assert await client.read(POOL, primary_name) == good[primary_name]
            await writer.wait_acked(10)

            # A deep scrub of the first one's PG reports the bad replica copy, and leaves
            # the PG inconsistent until it is repaired.
            pgid = on_replica["pg"]
            code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
            assert code == 1, report
            assert [(e["object"], e["osd"]) for e in report["errors"]] == [
                (replica_name, replica_osd)
            ], report
            assert report["repaired"] == 0 and report["unrepaired"] == 1
            await trio.to_thread.run_sync(wait_for_state, cluster, pgid, "inconsistent")
            assert await client.read(POOL, replica_name) == good[replica_name]
            await writer.wait_acked(10)

            code, report = await trio.to_thread.run_sync(scrub, cluster, "repair", pgid)
            assert code == 0 and report["repaired"] == 1, report
            repaired = await trio.to_thread.run_sync(
                stored_block, cluster, replica_osd, replica_name, 1
            )
            assert repaired == good[replica_name][BS : 2 * BS]
            await trio.to_thread.run_sync(wait_for_state, cluster, pgid, "inconsistent", False)
            await writer.wait_acked(10)

        # The read repaired the primary's copy: a deep scrub of its PG finds nothing.
        code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", on_primary["pg"])
        assert code == 0 and report["errors"] == [], report
        state = await trio.to_thread.run_sync(pg_state, cluster, on_primary["pg"])
        assert "inconsistent" not in state.split("+")
        await check_healed(cluster, client, ledger, writer)
        assert writer.stats.reads > 0
