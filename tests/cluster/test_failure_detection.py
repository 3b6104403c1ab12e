"""Daemons report silent peers; the master marks them down, and out after a while."""

from __future__ import annotations

import json
import os
import signal
import time

import trio

from store.client.api import Client
from tests.cluster.conftest import ClusterFactory
from tests.cluster.harness import Cluster, wait_until


def osds(cluster: Cluster) -> dict[int, dict[str, object]]:
    rows = json.loads(cluster.cli("osd", "ls", "--json").stdout)
    return {int(r["id"]): r for r in rows}


def pg_states(cluster: Cluster) -> dict[str, int]:
    states: dict[str, int] = {}
    for row in json.loads(cluster.cli("pg", "ls", "--json").stdout):
        states[row["state"]] = states.get(row["state"], 0) + 1
    return states


def test_peers_report_a_stopped_daemon_down_before_the_masters_grace(
    cluster_factory: ClusterFactory,
) -> None:
    # The master alone would wait 120 s; its peers notice within their 1.5 s grace.
    cluster = cluster_factory(osds=3, grace=120.0)
    for i in range(3):
        cluster.kill(f"osd.{i}", signal.SIGTERM)
    for i in range(3):
        cluster.start_osd(i, extra=["--peer-grace", "1.5"])
    cluster.wait_healthy()
    stopped = cluster.procs["osd.2"].pid
    os.killpg(stopped, signal.SIGSTOP)
    try:
        wait_until(lambda: not osds(cluster)[2]["up"], "osd.2 marked down", timeout=30)
        master_log = cluster.log("master")
        assert "marking osd.2 down: reported silent by osd.0, osd.1" in master_log
        # While both still report it, its own heartbeats to the master do not bring it up.
    finally:
        os.killpg(stopped, signal.SIGCONT)
    # Once it answers its peers again, they withdraw their reports and it is up again.
    wait_until(lambda: osds(cluster)[2]["up"], "osd.2 up again", timeout=60)
    cluster.wait_healthy()


def test_down_daemon_goes_out_after_the_interval_and_back_in_when_it_boots(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(osds=4, grace=2.0, master_extra=["--down-out-interval", "3"])
    data = {f"obj-{i}": os.urandom(3000 + i) for i in range(40)}
    on_3: set[str] = set()

    async def write_all() -> None:
        async with Client.connect(cluster.config()) as client:
            for name, body in data.items():
                await client.write_full("default", name, body)
                if 3 in client.locate("default", name)["acting"]:
                    on_3.add(name)

    trio.run(write_all)
    assert on_3
    # Maintenance first: with noout, a daemon that goes down stays in.
    cluster.cli("osd", "set", "noout")
    assert "OSDMAP_FLAGS" in cluster.cli("health", "detail", check=False).stdout.decode()
    cluster.kill("osd.3")
    wait_until(lambda: not osds(cluster)[3]["up"], "osd.3 down", timeout=60)
    time.sleep(5)
    assert osds(cluster)[3]["in"], "noout is set: osd.3 must stay in"
    # Each object osd.3 held lacks that copy, and no other copy is anywhere but in place.
    objects = json.loads(cluster.cli("status", "--json", check=False).stdout)["objects"]
    assert objects == {
        "total": len(data),
        "copies_wanted": 3 * len(data),
        "degraded": len(on_3),
        "misplaced": 0,
    }
    cluster.cli("osd", "unset", "noout")
    wait_until(lambda: not osds(cluster)[3]["in"], "osd.3 out", timeout=30)
    assert "marking out osd.3: down for more than 3s" in cluster.log("master")
    # Its copies are made again on the other three: every PG clean at full size.
    wait_until(lambda: pg_states(cluster) == {"active+clean": 16}, "3 copies again", timeout=90)

    async def read_all() -> None:
        async with Client.connect(cluster.config()) as client:
            for name, body in data.items():
                assert await client.read("default", name) == body, name

    trio.run(read_all)
    # Out by the master, not by an operator: in again as soon as it boots.
    cluster.start_osd(3)
    wait_until(
        lambda: osds(cluster)[3]["up"] and osds(cluster)[3]["in"], "osd.3 up and in", timeout=60
    )
    cluster.wait_healthy(timeout=90)
    trio.run(read_all)


def test_remove_a_daemon_only_once_its_data_lives_elsewhere(
    cluster_factory: ClusterFactory,
) -> None:
    cluster = cluster_factory(osds=4, grace=2.0)
    refused = cluster.cli("osd", "rm", "3", check=False)
    assert refused.returncode != 0
    assert "is in: mark it out" in refused.stderr.decode()
    cluster.cli("osd", "out", "3")
    refused = cluster.cli("osd", "rm", "3", check=False)
    assert refused.returncode != 0  # still up
    cluster.kill("osd.3", signal.SIGTERM)
    wait_until(lambda: not osds(cluster)[3]["up"], "osd.3 down", timeout=60)
    wait_until(
        lambda: pg_states(cluster) == {"active+clean": 16}, "clean without osd.3", timeout=60
    )
    cluster.cli("osd", "rm", "3")
    assert 3 not in osds(cluster)
    assert cluster.cli("osd", "rm", "3", check=False).returncode != 0  # no such daemon
    cluster.wait_healthy()


def test_pg_ls_and_query(cluster: Cluster) -> None:
    rows = json.loads(cluster.cli("pg", "ls", "--json").stdout)
    assert len(rows) == 16
    assert {r["state"] for r in rows} == {"active+clean"}
    for r in rows:
        assert len(r["acting"]) == 3 and r["primary"] == r["acting"][0]
    table = cluster.cli("pg", "ls").stdout.decode()
    assert table.splitlines()[0].split()[:2] == ["PG", "STATE"]
    assert len(table.splitlines()) == 17
    assert json.loads(cluster.cli("pg", "ls", "--state", "degraded", "--json").stdout) == []
    assert len(json.loads(cluster.cli("pg", "ls", "--state", "clean", "--json").stdout)) == 16

    async def write() -> str:
        async with Client.connect(cluster.config()) as client:
            await client.write_full("default", "queried", b"x" * 100)
            return str(client.locate("default", "queried")["pg"])

    pgid = trio.run(write)
    query = json.loads(cluster.cli("pg", "query", pgid).stdout)
    assert query["pgid"] == pgid
    assert query["state"] == "active+clean"
    assert query["objects"] >= 1
    assert query["copies"] == {"degraded": 0, "misplaced": 0}
    assert sorted(query["active_replicas"]) == sorted(query["acting"][1:])
    for bad, message in (("nonsense", "bad PG id"), ("1.ff", "has PGs 0..f"), ("9.0", "no pool")):
        result = cluster.cli("pg", "query", bad, check=False)
        assert result.returncode != 0
        assert message in result.stderr.decode(), result.stderr
