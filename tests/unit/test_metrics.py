"""Metrics without sockets: histograms, the families collectors build, the endpoint's routes."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from store.client.transport import Transport
from store.errors import Code
from store.gateways.web.server import Request, Response
from store.metrics.client import result_name, transport_families
from store.metrics.endpoint import MetricsEndpoint
from store.metrics.families import ScrapeCollector, counter, gauge
from store.metrics.osd import FrontStats, PeerTraffic, data_bytes_of, osd_families
from store.metrics.stats import LatencyHistogram
from store.osd.ops import Write, WriteFull
from tests.metric_samples import Samples, parse_samples, samples_of


def test_histogram_buckets_are_prometheus_buckets() -> None:
    h = LatencyHistogram([0.001, 0.01, 0.1])
    for v in (0.0005, 0.001, 0.002, 0.05, 0.1, 7.0):
        h.observe(v)
    # `le` is inclusive: 0.001 falls in the first bucket, 0.1 in the third.
    assert h.cumulative() == [("0.001", 2), ("0.01", 3), ("0.1", 5), ("+Inf", 6)]
    assert h.count == 6
    assert h.total == pytest.approx(7.1535)
    assert h.quantile(0.5) == 0.01
    assert h.quantile(1.0) == float("inf")
    assert LatencyHistogram().quantile(0.5) is None
    with pytest.raises(ValueError):
        LatencyHistogram([0.1, 0.01])
    with pytest.raises(ValueError):
        LatencyHistogram([])


def request(
    path: str, method: str = "GET", headers: list[tuple[str, str]] | None = None
) -> Request:
    return Request(method, path, headers or [], "1.1", "http", ("127.0.0.1", 1), None)  # type: ignore[arg-type]


def parse(response: Response) -> Samples:
    assert isinstance(response.body, bytes)
    return parse_samples(response.body.decode())


async def test_endpoint_routes() -> None:
    state = {"ready": "booting"}
    endpoint = MetricsEndpoint(
        "test", ready=lambda: state["ready"], config={"role": "test", "settings": {}}
    )
    endpoint.add(ScrapeCollector(lambda: [counter("store_test_things", "Things.", 5)], "test"))

    def broken() -> list[Any]:
        raise RuntimeError("a bug in one collector")

    endpoint.add(ScrapeCollector(broken, "broken"))
    metrics = await endpoint.handle(request("/metrics"))
    assert metrics.status == 200
    samples = parse(metrics)
    assert samples[("store_test_things_total", frozenset())] == 5
    assert samples[("store_build_info", frozenset({("role", "test"), ("version", "0.1.0")}))] == 1
    assert any(name.startswith("process_") for name, _ in samples)

    openmetrics = await endpoint.handle(
        request("/metrics", headers=[("accept", "application/openmetrics-text; version=1.0.0")])
    )
    assert (openmetrics.header("content-type") or "").startswith("application/openmetrics-text")
    assert isinstance(openmetrics.body, bytes) and openmetrics.body.endswith(b"# EOF\n")

    assert (await endpoint.handle(request("/healthz"))).status == 200
    not_ready = await endpoint.handle(request("/readyz"))
    assert (not_ready.status, not_ready.body) == (503, b"booting\n")
    state["ready"] = None  # type: ignore[assignment]
    assert (await endpoint.handle(request("/readyz"))).status == 200
    config = await endpoint.handle(request("/config"))
    assert isinstance(config.body, bytes) and json.loads(config.body) == {
        "role": "test",
        "settings": {},
    }
    assert (await endpoint.handle(request("/nope"))).status == 404
    assert (await endpoint.handle(request("/metrics", method="DELETE"))).status == 405
    no_config = MetricsEndpoint("x")
    assert (await no_config.handle(request("/config"))).status == 404


async def test_a_failing_readiness_check_is_not_ready() -> None:
    def fails() -> str | None:
        raise KeyError("oops")

    answer = await MetricsEndpoint("x", ready=fails).handle(request("/readyz"))
    assert answer.status == 503


def test_families_helpers() -> None:
    g = gauge("store_x", "X.", labels=["a"], samples=[(("1",), 2.0)])
    assert [(s.name, s.labels, s.value) for s in g.samples] == [("store_x", {"a": "1"}, 2.0)]


def test_result_names() -> None:
    assert result_name(0) == "ok"
    assert result_name(int(Code.ENOSPC)) == "enospc"
    assert result_name(999) == "unknown"
    assert result_name(-1) == "unknown"


def test_front_stats_and_peer_traffic() -> None:
    stats = FrontStats()
    stats.answered("read", 0, 0.002)
    stats.answered("read", int(Code.ENOENT), 0.001)
    stats.answered("write", 0, 0.02)
    assert stats.ops == {("read", 0): 1, ("read", int(Code.ENOENT)): 1, ("write", 0): 1}
    assert stats.latency["read"].count == 2
    ops = [Write(0, b"abc"), WriteFull(b"12345")]
    assert data_bytes_of(ops) == 8
    traffic = PeerTraffic()
    traffic.forwarded(2, ops)
    traffic.repop_received(ops)
    traffic.push_received({"data": b"x" * 10})
    traffic.push_received("hostile")
    traffic.pushed(SimpleNamespace(data=b"y" * 4))
    traffic.recovery_started("1.a", 3)
    traffic.recovery_finished("1.a", 3, True)
    traffic.recovery_finished("1.a", 4, False)
    assert traffic.ops == {
        "replication_sent": 2,
        "replication_received": 1,
        "recovery_received": 2,
        "recovery_pushed": 1,
    }
    assert traffic.bytes["replication_sent"] == 16
    assert traffic.bytes["recovery_received"] == 10
    assert traffic.recoveries == {"started": 1, "finished": 1, "abandoned": 1}


def fake_daemon() -> Any:
    front = SimpleNamespace(
        stats=FrontStats(),
        dropped={"malformed": 3, "stale_epoch": 1},
        sessions=SimpleNamespace(sessions={1: object(), 2: object()}),
        stages=SimpleNamespace(area=SimpleNamespace(held=8192)),
    )
    front.stats.answered("write", 0, 0.01)
    front.stats.data_bytes["staged"] += 8192
    front.stats.data_bytes["written"] += 4096
    idle = SimpleNamespace(recovering=set())
    pgs = {
        (1, 0): SimpleNamespace(status=lambda: "active+clean", state="active", recovery=idle),
        (1, 1): SimpleNamespace(status=lambda: None, state="replica", recovery=idle),
        (1, 2): SimpleNamespace(
            status=lambda: "active+recovering+degraded",
            state="active",
            recovery=SimpleNamespace(recovering={3}),
        ),
    }
    return SimpleNamespace(
        osd_id=4,
        config=SimpleNamespace(host="h", full_ratio=0.95),
        map=SimpleNamespace(epoch=12),
        front=front,
        pgs=pgs,
        disk=SimpleNamespace(total=1000, avail=250, used_ratio=0.75),
        full=False,
        nearfull=False,
        usage={"objects": 5, "bytes": 300},
        store=SimpleNamespace(checksum_errors=0),
        writes=SimpleNamespace(batches=2, applied=9),
        peers=SimpleNamespace(links={}),
    )


def test_osd_families() -> None:
    s = samples_of(osd_families(fake_daemon()))
    assert s[("store_osd_info", frozenset({("osd", "4"), ("host", "h")}))] == 1
    assert s[("store_osd_map_epoch", frozenset())] == 12
    assert s[("store_osd_ops_total", frozenset({("op", "write"), ("result", "ok")}))] == 1
    assert s[("store_osd_op_data_bytes_total", frozenset({("direction", "written")}))] == 4096
    assert s[("store_osd_datagrams_dropped_total", frozenset({("reason", "stale_epoch")}))] == 1
    assert s[("store_osd_pgs", frozenset({("state", "active+clean")}))] == 1
    assert s[("store_osd_pgs", frozenset({("state", "active+recovering+degraded")}))] == 1
    assert s[("store_osd_pg_replicas", frozenset())] == 1
    assert s[("store_osd_recovering_members", frozenset())] == 1
    assert s[("store_osd_sessions", frozenset())] == 2
    assert s[("store_osd_staged_bytes", frozenset())] == 8192
    assert s[("store_osd_op_data_bytes_total", frozenset({("direction", "staged")}))] == 8192
    assert s[("store_osd_disk_used_ratio", frozenset())] == 0.75
    assert s[("store_osd_objects", frozenset())] == 5
    assert s[("store_osd_op_latency_seconds_count", frozenset({("op", "write")}))] == 1


def test_client_families() -> None:
    transport = Transport(None, lambda: (b"", b""), lambda: 0)  # type: ignore[arg-type]
    st = transport.stats
    st.requests, st.retransmits, st.timeouts, st.rehellos = 10, 3, 1, 2
    st.replies[0] += 8
    st.replies[int(Code.ENOENT)] += 1
    st.dropped_by["bad_mac"] += 2
    st.latency.observe(0.003)
    s = samples_of(transport_families(transport))
    assert s[("store_client_requests_total", frozenset())] == 10
    assert s[("store_client_retransmissions_total", frozenset())] == 3
    assert s[("store_client_timeouts_total", frozenset())] == 1
    assert s[("store_client_session_rehellos_total", frozenset())] == 2
    assert s[("store_client_replies_total", frozenset({("result", "enoent")}))] == 1
    assert s[("store_client_datagrams_dropped_total", frozenset({("reason", "bad_mac")}))] == 2
    assert s[("store_client_request_latency_seconds_count", frozenset())] == 1
