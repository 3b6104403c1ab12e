"""Backfills wait for slots: a daemon takes part in at most max_backfills at once."""

from __future__ import annotations

import json
import os
import time

import trio

from store.client.api import Client
from tests.cluster.conftest import ClusterFactory


def test_one_backfill_at_a_time_per_daemon(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(osds=4, pg_num=16)
    for i in range(4):
        cluster.kill(f"osd.{i}")
        # 1 MB/s of recovery each, so the backfills last long enough to be watched.
        cluster.start_osd(i, extra=["--max-backfills", "1", "--recovery-max-rate", "1"])
    cluster.wait_healthy()
    data = {f"obj-{i}": os.urandom(40_000) for i in range(120)}

    async def write_all() -> None:
        async with Client.connect(cluster.config()) as client:
            for name, body in data.items():
                await client.write_full("default", name, body)

    trio.run(write_all)
    cluster.cli("osd", "out", "3")
    seen_waiting = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rows = json.loads(cluster.cli("pg", "ls", "--json").stdout)
        running: dict[int, int] = {}
        for row in rows:
            parts = row["state"].split("+")
            seen_waiting |= "backfill_wait" in parts
            if "backfilling" in parts:
                running[row["primary"]] = running.get(row["primary"], 0) + 1
        assert all(n <= 1 for n in running.values()), rows
        if rows and all(r["state"] == "active+clean" for r in rows):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("recovery did not finish")
    assert seen_waiting, "more PGs needed a backfill than there were slots: some had to wait"

    async def read_all() -> None:
        async with Client.connect(cluster.config()) as client:
            for name, body in data.items():
                assert await client.read("default", name) == body, name

    trio.run(read_all)
