"""Copies a daemon no longer serves are removed once the PG is clean elsewhere."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time

import trio

from store.client.api import Client
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import Cluster


def all_pgs_clean(cluster: Cluster) -> bool:
    status = json.loads(cluster.cli("status", "--json", check=False).stdout or b"{}")
    pgs = status.get("pgs") or {}
    return bool(pgs.get("total")) and pgs.get("states") == {"active+clean": pgs["total"]}


def live_objects(cluster: Cluster, osd: int) -> int:
    """Objects in a running daemon's store, read beside it (SQLite in WAL mode)."""
    path = cluster.root / f"osd.{osd}" / "store.db"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (count,) = db.execute("SELECT count(*) FROM objects WHERE live = 1").fetchone()
    return int(count)


async def test_an_out_daemon_drops_its_copies_after_the_data_moved(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(osds=4, pool_size=3, pg_num=16)
    data = {f"obj-{i}": os.urandom(5000 + i) for i in range(60)}
    async with Client.connect(cluster.config()) as client:
        for name, body in data.items():
            await client.write_full("default", name, body)
    held_before = live_objects(cluster, 3)
    assert held_before > 0  # with 4 daemons and 3 copies, osd.3 holds some of them

    cluster.cli("osd", "out", "3")  # up, but no longer in any acting set
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not live_objects(cluster, 3) and await trio.to_thread.run_sync(all_pgs_clean, cluster):
            break
        await trio.sleep(0.5)
    assert live_objects(cluster, 3) == 0
    assert "removed our stray copy" in cluster.log("osd.3")

    # Nothing was lost: every object reads back, and from three copies elsewhere.
    async with Client.connect(cluster.config()) as client:
        for name, body in data.items():
            assert await client.read("default", name) == body, name
            assert 3 not in client.locate("default", name)["acting"]
    total = sum(live_objects(cluster, osd) for osd in range(3))
    assert total == 3 * len(data)


async def test_a_stray_copy_stays_while_the_pg_is_degraded(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(osds=4, pool_size=3, pg_num=8)
    data = {f"obj-{i}": os.urandom(3000) for i in range(30)}
    async with Client.connect(cluster.config()) as client:
        for name, body in data.items():
            await client.write_full("default", name, body)
    held = live_objects(cluster, 3)
    assert held > 0
    cluster.kill("osd.0", signal.SIGKILL)
    cluster.cli("osd", "out", "3")
    # Two daemons are left in: every PG is short of a copy, so osd.3's copies are
    # still needed and must stay (they are asked about every second or so).
    await trio.sleep(8)
    assert live_objects(cluster, 3) == held
    assert "removed our stray copy" not in cluster.log("osd.3")

    cluster.start_osd(0)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if not live_objects(cluster, 3) and await trio.to_thread.run_sync(all_pgs_clean, cluster):
            break
        await trio.sleep(0.5)
    assert live_objects(cluster, 3) == 0
    async with Client.connect(cluster.config()) as client:
        for name, body in data.items():
            assert await client.read("default", name) == body, name
