"""Metrics of a cluster client (gateways, `store bench`): requests, retransmissions,
timeouts, datagrams, latency. Read from the transport's plain counters at scrape time."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from store.errors import Code
from store.metrics.families import ScrapeCollector, counter, counter_by, gauge, histogram

if TYPE_CHECKING:
    from store.client.api import Client
    from store.client.transport import Transport


def result_name(code: int) -> str:
    """The `result` label of a reply code: ``ok``, ``enoent``, ... or ``unknown``."""
    if code in Code._value2member_map_:
        return "ok" if code == Code.OK else Code(code).name.lower()
    return "unknown"


def transport_families(transport: Transport) -> Iterator[Metric]:
    s = transport.stats
    yield counter(
        "store_client_requests", "Requests sent to daemons (not counting resends).", s.requests
    )
    yield counter(
        "store_client_retransmissions",
        "Requests sent again after a retransmission timeout.",
        s.retransmits,
    )
    yield counter(
        "store_client_timeouts", "Requests that got no answer before their deadline.", s.timeouts
    )
    yield counter(
        "store_client_session_resets", "Sessions a daemon said it no longer had.", s.resets
    )
    yield counter(
        "store_client_session_rehellos",
        "New sessions begun after a run of sends to one daemon met no answer at all.",
        s.rehellos,
    )
    replies: dict[str, int] = {}
    for code, n in s.replies.items():
        name = result_name(code)
        replies[name] = replies.get(name, 0) + n
    yield counter_by("store_client_replies", "Replies received, by result.", "result", replies)
    yield counter_by(
        "store_client_datagrams",
        "Datagrams sent and received.",
        "direction",
        {"sent": s.datagrams_sent, "received": s.datagrams_received},
    )
    yield counter_by(
        "store_client_datagram_bytes",
        "Bytes of datagrams sent and received.",
        "direction",
        {"sent": s.bytes_sent, "received": s.bytes_received},
    )
    yield counter_by(
        "store_client_datagrams_dropped",
        "Datagrams received and dropped, by reason.",
        "reason",
        dict(s.dropped_by),
    )
    yield histogram(
        "store_client_request_latency_seconds",
        "Time from a request's first send to its answer, resends included.",
        samples=[((), s.latency)],
    )
    yield gauge(
        "store_client_daemon_links", "Daemons this client has talked to.", len(transport.links)
    )


def client_collector(client: Client) -> ScrapeCollector:
    """The collector of a connected :class:`store.client.api.Client`."""

    def collect() -> Iterator[Metric]:
        yield from transport_families(client.transport)
        m = client.master.map
        yield gauge(
            "store_client_map_epoch", "Epoch of the map this client routes by.", m.epoch if m else 0
        )

    return ScrapeCollector(collect, "client")
