"""Prometheus metrics of a real cluster: counters move by what a workload did.

One cluster for the module (a master and three daemons, each serving ``--metrics``). A
client writes and reads known objects; the daemons' counters must move by exactly those
amounts (a read, or a write still in progress, may be answered once more per
retransmission the client reports). Garbage datagrams of known kinds must each be counted
under their drop reason.
"""

from __future__ import annotations

import os
import random
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from store.client.api import Client
from store.client.master_link import MasterLink
from store.client.udp import tune_buffers
from store.placement import pg_of, primary
from store.rpc import parse_hostport
from store.wire import stages
from store.wire.datagram import DatagramType
from tests.cluster.harness import Cluster
from tests.cluster.test_hostile import RawSession, object_led_by, raw_header
from tests.metric_samples import Samples, delta, parse_samples, value

POOL = "default"


def scrape(url: str) -> Samples:
    """Every sample of a /metrics page: (name, labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        return parse_samples(answer.read().decode())


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("metrics"))
    try:
        c.start_master(metrics=True)
        for i in range(3):
            c.start_osd(i, metrics=True)
            c.wait_registered(i)
        c.cli("pool", "create", POOL, "--size", "3", "--pg-num", "16")
        c.wait_healthy()
        yield c
    finally:
        c.stop()


def answered_writes(samples: Samples) -> float:
    """Write requests answered, summed over every result."""
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "store_osd_ops_total" and ("op", "write") in labels
    )


def daemons(cluster: Cluster) -> list[str]:
    return [f"osd.{i}" for i in range(3)]


async def test_counters_move_by_the_workload(cluster: Cluster) -> None:
    n, size = 24, 10_000
    rng = random.Random(3)
    payloads = {f"metrics-{i}": rng.randbytes(size) for i in range(n)}
    before = {d: scrape(cluster.metrics_url(d)) for d in daemons(cluster)}
    async with Client.connect(cluster.config()) as client:
        for name, data in payloads.items():
            await client.write_full(POOL, name, data)
        for name, data in payloads.items():
            assert await client.read(POOL, name, 0, size) == data
        stats = client.transport.stats
        m = client.map
        pool = m.pool_by_name(POOL)
        led: dict[str, int] = {d: 0 for d in daemons(cluster)}
        for name in payloads:
            led[f"osd.{primary(m, pool.id, pg_of(pool, name))}"] += 1
    after = {d: scrape(cluster.metrics_url(d)) for d in daemons(cluster)}
    assert stats.timeouts == 0
    resent = stats.retransmits

    for d in daemons(cluster):
        b, a = before[d], after[d]
        # Each daemon answered the writes of the objects it is primary of, all applied.
        assert delta(b, a, "store_osd_ops_total", op="write", result="ok") == led[d], d
        assert delta(b, a, "store_osd_op_data_bytes_total", direction="written") == led[d] * size
        reads = delta(b, a, "store_osd_ops_total", op="read", result="ok")
        assert led[d] <= reads <= led[d] + resent, d
        read_bytes = delta(b, a, "store_osd_op_data_bytes_total", direction="read")
        assert read_bytes == reads * size
        # Latency histograms count every answered write, whatever its result: a write
        # sent again while still in progress is answered "in progress", once per resend.
        answered = answered_writes(a) - answered_writes(b)
        assert led[d] <= answered <= led[d] + resent, d
        assert delta(b, a, "store_osd_op_latency_seconds_count", op="write") == answered
        assert delta(b, a, "store_osd_op_latency_seconds_bucket", op="write", le="+Inf") == answered
        assert delta(b, a, "store_osd_datagrams_total", direction="received") >= 2 * led[d]
        assert value(a, "store_osd_sessions") >= 1
        assert value(a, "store_osd_pgs", state="active+clean") >= 1

    def total(name: str, **labels: str) -> float:
        return sum(delta(before[d], after[d], name, **labels) for d in daemons(cluster))

    # Size 3: every write went to two replicas, and each replica got it once.
    sent = total("store_osd_peer_ops_total", kind="replication", direction="sent")
    received = total("store_osd_peer_ops_total", kind="replication", direction="received")
    assert sent == received == 2 * n
    assert total("store_osd_peer_bytes_total", kind="replication", direction="received") == (
        2 * n * size
    )


async def test_garbage_datagrams_counted_by_reason(cluster: Cluster) -> None:
    target = 0
    url = cluster.metrics_url(f"osd.{target}")
    rng = random.Random(11)
    config = cluster.config()
    before = scrape(url)
    async with trio.open_nursery() as nursery:
        master = await MasterLink.open(config, nursery)
        try:
            assert master.map is not None and master.credentials is not None
            m = master.map
            pool_id = m.pool_by_name(POOL).id
            own = {"p": pool_id, "o": object_led_by(m, target), "ops": [["stat"]]}
            # An object another daemon leads: the target answers ESTALE without serving it.
            other = next(
                f"elsewhere-{i}"
                for i in range(10_000)
                if primary(m, pool_id, pg_of(m.pools[pool_id], f"elsewhere-{i}")) != target
            )
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
                tune_buffers(sock, 4 * 1024 * 1024)
                await sock.bind(("127.0.0.1", 0))
                s = RawSession(
                    sock,
                    parse_hostport(m.osds[target].addr),
                    target,
                    master.credentials.ticket,
                    master.credentials.session_key,
                    m.epoch,
                )
                await s.hello()
                replayable = s.request(own)
                await sock.sendto(replayable, s.address)
                await s.round_trip(own)

                sent = {"malformed": 40, "unknown_session": 25, "bad_mac": 15, "replay": 10}
                for _ in range(sent["malformed"]):
                    await sock.sendto(rng.randbytes(rng.randrange(0, 40)), s.address)
                for _ in range(sent["unknown_session"]):
                    header = raw_header(DatagramType.REQUEST, rng.getrandbits(64) | 1, seq=1)
                    await sock.sendto(header + os.urandom(64), s.address)
                for _ in range(sent["bad_mac"]):
                    header = raw_header(DatagramType.REQUEST, s.session_id, seq=10**9)
                    await sock.sendto(header + os.urandom(64), s.address)
                # Forged stage pieces (FRAGMENT set), each naming a new stage of 8 MiB: of
                # a PG the target leads, and of one it does not (checked before the tag,
                # which fails: a bad_mac drop, not a stale_epoch one). No stage stays.
                pool = m.pools[pool_id]
                for name in (own["o"], other) * 10:
                    prefix = stages.PREFIX.pack(
                        rng.getrandbits(63), 0, 8 << 20, pool_id, pg_of(pool, name)
                    )
                    header = raw_header(DatagramType.REQUEST, s.session_id, seq=10**9, flags=3)
                    await sock.sendto(header + prefix + os.urandom(1000), s.address)
                sent["bad_mac"] += 20
                for _ in range(sent["replay"]):
                    await sock.sendto(replayable, s.address)
                stale = {"p": pool_id, "o": other, "ops": [["stat"]]}
                await s.round_trip(stale)  # answered (ESTALE), so read in order
                await s.round_trip(own)  # everything sent before has been read
        finally:
            nursery.cancel_scope.cancel()
            await master.aclose()
    after = scrape(url)
    for reason, count in sent.items():
        got = delta(before, after, "store_osd_datagrams_dropped_total", reason=reason)
        assert got == count, f"{reason}: sent {count}, counted {got}"
    assert delta(before, after, "store_osd_datagrams_dropped_total", reason="stale_epoch") == 1
    assert delta(before, after, "store_osd_ops_total", op="read", result="estale") == 1
    assert delta(before, after, "store_osd_datagrams_dropped_total", reason="internal_error") == 0
    assert value(after, "store_osd_staged_bytes") == 0


def test_health_endpoints_and_config(cluster: Cluster) -> None:
    for name in ("master", "osd.0"):
        assert get(cluster.metrics_url(name, "/healthz")) == (200, "ok\n")
        assert get(cluster.metrics_url(name, "/readyz")) == (200, "ready\n")
        status, _ = get(cluster.metrics_url(name, "/nothing-here"))
        assert status == 404
        status, body = get(cluster.metrics_url(name, "/config"))
        assert status == 200
        assert '"settings"' in body and '"metrics"' in body
    request = urllib.request.Request(cluster.metrics_url("osd.0"), data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405
    # The build info says which role serves the port.
    info = scrape(cluster.metrics_url("osd.1"))
    assert any(k[0] == "store_build_info" and ("role", "osd") in k[1] for k in info)
    assert value(info, "store_osd_map_epoch") >= 1


def test_master_metrics(cluster: Cluster, tmp_path: Path) -> None:
    url = cluster.metrics_url("master")
    before = scrape(url)
    assert value(before, "store_cluster_osds", status="up") == 3
    assert value(before, "store_cluster_health_status") == 0
    assert value(before, "store_cluster_pgs", state="active+clean") == 16
    assert value(before, "store_master_connections", role="osd") == 3
    cluster.cli("status")
    keyfile = cluster.add_client("metrics-reader", [f"{POOL}=r"])
    # The same client with a wrong key is refused.
    wrong = tmp_path / "wrong.key"
    text = keyfile.read_text()
    key = text.split('key = "')[1].split('"')[0]
    forged = ("B" if key[0] != "B" else "C") + key[1:]
    wrong.write_text(text.replace(key, forged))
    refused = cluster.cli("status", "--keyring", str(wrong), check=False)
    assert refused.returncode != 0
    after = scrape(url)
    assert (
        delta(before, after, "store_master_authentications_total", kind="client", result="ok") >= 2
    )
    assert (
        delta(before, after, "store_master_authentications_total", kind="client", result="refused")
        == 1
    )
    assert delta(before, after, "store_master_requests_total", op="status") >= 1
    assert delta(before, after, "store_master_heartbeats_total") > 0
