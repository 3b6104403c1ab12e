"""Daemons added to a cluster holding data: PGs move to them, and while they move no
object ever has fewer than ``size`` current copies on up daemons."""

from __future__ import annotations

import trio

from store.client.api import Client
from store.placement import ClusterMap, acting_set, pg_of
from tests.chaos.checks import CLIENT_TIMEOUT, POOL, check_healed
from tests.chaos.conftest import ChaosFactory
from tests.chaos.ledger import Ledger
from tests.chaos.observe import Version, all_clean, copies_on_disk, status
from tests.chaos.writer import Writer, write_objects

SIZE = 3
STILL = 160  # objects written before the new daemons come, and never again


async def test_new_daemons_take_pgs_without_an_object_ever_short_of_copies(
    chaos_cluster: ChaosFactory,
) -> None:
    cluster = chaos_cluster(3, size=SIZE, min_size=2, pg_num=16)
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        pool = client.pool(POOL)
        ledger = Ledger(client.max_piece)
        still = [f"still-{i:03d}" for i in range(STILL)]
        await write_objects(client, POOL, ledger, still, 64000)
        on_disk = await trio.to_thread.run_sync(copies_on_disk, cluster, [0, 1, 2], pool.id)
        current: dict[str, Version] = {}
        for name in still:
            versions = {c.version for c in on_disk[name]}
            assert len(on_disk[name]) == SIZE and len(versions) == 1, (name, on_disk[name])
            current[name] = versions.pop()

        samples = 0
        moving = 0  # samples taken while some PG was not active+clean

        async def sample() -> None:
            """Count each still object's current copies on the (all up) daemons. The new
            daemons are read last: a copy only leaves an old daemon once the new ones
            hold it, so no copy in transit can be missed between two reads."""
            nonlocal samples, moving
            while True:
                summary = await status(cluster)
                copies = await trio.to_thread.run_sync(
                    copies_on_disk, cluster, list(range(5)), pool.id
                )
                for name in still:
                    held = sum(1 for c in copies.get(name, []) if c.version == current[name])
                    assert held >= SIZE, f"{name} has {held} current copies: {copies.get(name)}"
                samples += 1
                moving += not all_clean(summary)
                await trio.sleep(0.1)

        def moved(m: ClusterMap) -> bool:
            copies = copies_on_disk(cluster, list(range(5)), pool.id)
            for name in still:
                holders = {c.osd for c in copies.get(name, []) if c.version == current[name]}
                if not set(acting_set(m, pool.id, pg_of(pool, name))) <= holders:
                    return False
            return True

        writer = Writer(client, POOL, ledger, prefix="live", max_objects=80, seed=4)
        async with writer.running(), trio.open_nursery() as nursery:
            nursery.start_soon(sample)
            await writer.wait_acked(10)
            for new in (3, 4):
                await trio.to_thread.run_sync(cluster.add_osd, new)
            await writer.wait_acked(20)
            # Until the data has moved: each still object on every member of its PG's
            # acting set in the newest map, and every PG clean.
            with trio.fail_after(90):
                while not (
                    sum(o.up for o in client.map.osds.values()) == 5
                    and all_clean(await status(cluster))
                    and await trio.to_thread.run_sync(moved, client.map)
                ):
                    await trio.sleep(0.5)
            nursery.cancel_scope.cancel()

        assert samples >= 5 and moving >= 1, (samples, moving)
        m = client.map
        assert {3, 4} <= {o for pg in range(pool.pg_num) for o in acting_set(m, pool.id, pg)}
        await check_healed(cluster, client, ledger, writer)
