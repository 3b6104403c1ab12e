"""A replica that stops answering without being marked down is recovered when it returns."""

from __future__ import annotations

import json
import os
import signal
import time

import trio

from store.client.api import Client
from store.osd.pg import REPLICATION_TIMEOUT
from tests.cluster.conftest import ClusterFactory


async def test_a_replica_paused_past_the_replication_timeout_is_recovered(
    cluster_factory: ClusterFactory,
) -> None:
    # The grace is long enough that the master never marks the paused daemon down: only
    # the primaries notice, when their forwarded writes time out.
    cluster = cluster_factory(osds=3, pool_size=3, pg_num=8, grace=60.0)
    acked: dict[str, bytes] = {}
    async with Client.connect(cluster.config()) as client:
        # Writes to PGs that osd.1 leads would just wait out the pause; those led by the
        # others forward to osd.1 and meet the replication timeout.
        names = [
            name
            for name in (f"obj-{i}" for i in range(200))
            if client.locate("default", name)["primary"] != 1
        ][:40]

        async def writer(offset: int) -> None:
            i = offset
            while True:
                name, data = names[i % len(names)], os.urandom(3000)
                # Until the write answers, its outcome is unknown (a failure or the
                # cancellation at the end may still have been applied): not checked.
                acked.pop(name, None)
                try:
                    await client.write_full("default", name, data)
                except Exception:  # writes during the pause may fail
                    pass
                else:
                    acked[name] = data
                i += 4

        async with trio.open_nursery() as nursery:
            for offset in range(4):
                nursery.start_soon(writer, offset)
            await trio.sleep(1)
            paused = cluster.procs["osd.1"].pid
            os.killpg(paused, signal.SIGSTOP)
            await trio.sleep(REPLICATION_TIMEOUT + 2)
            os.killpg(paused, signal.SIGCONT)
            await trio.sleep(2)
            nursery.cancel_scope.cancel()
    assert "fell behind" in cluster.log("osd.0") + cluster.log("osd.2")

    deadline = time.monotonic() + 60
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        status = json.loads(cluster.cli("status", "--json", check=False).stdout)
        states = status["pgs"]["states"]
        if states == {"active+clean": 8}:
            break
        await trio.sleep(1)
    assert states == {"active+clean": 8}
    async with Client.connect(cluster.config()) as client:
        for name, data in acked.items():
            assert await client.read("default", name) == data, name
