"""Two daemons of three killed: writes are refused with an error that says why (too few
copies for min_size) instead of hanging, reads are still served by the survivor, and
everything heals when the two return."""

from __future__ import annotations

import pytest
import trio

from store.client.api import Client
from store.errors import ClientTimeout, RemoteError
from tests.chaos.checks import CLIENT_TIMEOUT, POOL, check_healed, kill
from tests.chaos.conftest import ChaosFactory
from tests.chaos.ledger import Ledger, content
from tests.chaos.observe import wait_osd
from tests.chaos.writer import Writer, read_object, write_objects

SURVIVOR = 0
KILLED = (1, 2)


async def test_below_min_size_writes_are_refused_and_reads_go_on(
    chaos_cluster: ChaosFactory,
) -> None:
    cluster = chaos_cluster(3, size=3, min_size=2, pg_num=8)
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        ledger = Ledger(client.max_piece)
        await write_objects(client, POOL, ledger, [f"base-{i:03d}" for i in range(40)], 30000)
        writer = Writer(client, POOL, ledger, prefix="obj", max_objects=100, seed=7)
        async with writer.running():
            await writer.wait_acked(10)
            for osd in KILLED:
                await kill(cluster, osd)
            for osd in KILLED:
                await wait_osd(cluster, osd, up=False, timeout=15)

            # The survivor leads every PG alone. A write fails within the client's
            # deadline, saying why.
            with trio.fail_after(CLIENT_TIMEOUT + 10):
                with pytest.raises((RemoteError, ClientTimeout)) as refusal:
                    await client.write_full(POOL, "refused", content("refused", 1, 5000))
            assert "min_size" in str(refusal.value), refusal.value
            assert "EDEGRADED" in str(refusal.value), refusal.value

            # Every object still reads back from the survivor, as acknowledged.
            for name in ledger.acknowledged_names():
                assert client.locate(POOL, name)["acting"] == [SURVIVOR]
                outcome = await read_object(client, POOL, name)
                assert outcome.unavailable is None, (name, outcome.unavailable)
                problem, _ = outcome.judge(ledger, name)
                assert problem is None, problem
            # The writer's own writes meet the same refusal (once those sent to the two
            # dead primaries before they were marked down have given up).
            with trio.fail_after(3 * CLIENT_TIMEOUT):
                while not writer.stats.refused:
                    await trio.sleep(0.1)

            for osd in KILLED:
                cluster.start_osd(osd)
            for osd in KILLED:
                await wait_osd(cluster, osd, up=True, timeout=15)
            await writer.wait_acked(30)
        await check_healed(cluster, client, ledger, writer)
