"""Client I/O through relays that lose 20 % of the datagrams each way."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from store.client.api import Client
from tests.cluster.harness import Cluster, free_dual_port
from tests.cluster.relay import LossyRelay

LOSS = 0.2
OBJECTS = 200
MAX_SIZE = 2 << 20
IN_FLIGHT = 48  # objects written or read at once
TIMEOUT = 300.0  # per request; a request needs several tries when a third of them fail


@pytest.fixture
def lossy_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, list[LossyRelay]]]:
    """Three daemons that tell clients to use a lossy relay and peers to use the real port."""
    cluster = Cluster(tmp_path / "cluster")
    relays: list[LossyRelay] = []
    try:
        cluster.start_master()
        for i in range(3):
            port = cluster.osd_ports[i] = free_dual_port()
            relay = LossyRelay(("127.0.0.1", port), loss=LOSS, rng=random.Random(100 + i))
            relays.append(relay)
            cluster.start_osd(
                i,
                extra=[
                    *("--advertise", f"127.0.0.1:{relay.port}"),
                    *("--advertise-peer", f"127.0.0.1:{port}"),
                ],
            )
            cluster.wait_registered(i)
        cluster.cli("pool", "create", "default", "--size", "3", "--pg-num", "16")
        cluster.wait_healthy()
        yield cluster, relays
    finally:
        cluster.stop()
        for relay in relays:
            relay.close()


async def test_objects_survive_20_percent_loss_each_way(
    lossy_cluster: tuple[Cluster, list[LossyRelay]], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster, relays = lossy_cluster
    rng = random.Random(20)
    sizes = {f"lossy-{i}": n for i, n in enumerate([0, 1, MAX_SIZE])}
    sizes |= {f"lossy-{i}": rng.randrange(MAX_SIZE + 1) for i in range(len(sizes), OBJECTS)}
    seeds = {name: rng.getrandbits(64) for name in sizes}
    written: dict[str, bytes] = {}
    wrong: list[str] = []
    limit = trio.CapacityLimiter(IN_FLIGHT)

    def content(name: str) -> bytes:
        return random.Random(seeds[name]).randbytes(sizes[name])

    async with trio.open_nursery() as relay_nursery:
        for relay in relays:
            await relay_nursery.start(relay.run)
        async with Client.connect(cluster.config(timeout=TIMEOUT)) as client:
            m = client.map
            assert {i: (o.addr, o.peer_addr) for i, o in m.osds.items()} == {
                i: (f"127.0.0.1:{r.port}", f"127.0.0.1:{cluster.osd_ports[i]}")
                for i, r in enumerate(relays)
            }
            started = trio.current_time()

            async def write(name: str) -> None:
                async with limit:
                    data = content(name)
                    await client.write_full("default", name, data)
                    written[name] = hashlib.sha256(data).digest()

            async def read(name: str) -> None:
                async with limit:
                    got = await client.read("default", name)
                    if hashlib.sha256(got).digest() != written[name] or len(got) != sizes[name]:
                        wrong.append(name)

            for step in (write, read):
                async with trio.open_nursery() as nursery:
                    for name in sizes:
                        nursery.start_soon(step, name)
            elapsed = trio.current_time() - started
            stats = client.transport.stats
            await trio.sleep(3 * cluster.heartbeat)  # the daemons' counters reach the master
            reports = (await client.master.call("status"))["reports"]
        relay_nursery.cancel_scope.cancel()

    assert sorted(written) == sorted(sizes)
    assert wrong == []
    forwarded = sum(r.stats.to_daemon + r.stats.to_client for r in relays)
    lost_up = sum(r.stats.lost_to_daemon for r in relays)
    lost_down = sum(r.stats.lost_to_client for r in relays)
    # The loss happened, both ways, at about the rate asked for; and the client made up for it.
    assert lost_up > 0 and lost_down > 0
    assert 0.15 < (lost_up + lost_down) / (forwarded + lost_up + lost_down) < 0.25
    assert stats.retransmits > 0
    # The relays forward what they do not lose unchanged: nothing may fail its checks.
    daemon_drops: Counter[str] = Counter()
    for report in reports.values():
        daemon_drops.update(report["dropped"])
    assert len(reports) == 3
    assert {k: daemon_drops[k] for k in ("bad_mac", "auth_failed", "malformed")} == {
        "bad_mac": 0,
        "auth_failed": 0,
        "malformed": 0,
    }
    with capsys.disabled():
        print(
            f"\n{OBJECTS} objects ({sum(sizes.values()) / 2**20:.0f} MiB) written and read "
            f"through {LOSS:.0%} loss each way in {elapsed:.1f} s: {stats.requests} requests, "
            f"{stats.retransmits} retransmissions, {stats.resets} resets; relays forwarded "
            f"{forwarded} datagrams and lost {lost_up} on the way in, {lost_down} on the way out; "
            f"daemons dropped {dict(daemon_drops)}"
        )
