"""What the NBD gateway (the nbdkit plugin) counts, and the families it exposes.

Every NBD request is counted in the plugin's trio thread, where it is served and where
the metrics port is scraped, so nothing here locks. The cluster client's own families come
from ``store.metrics.client``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from store.metrics.families import ScrapeCollector, counter, gauge, histogram
from store.metrics.stats import LatencyHistogram

if TYPE_CHECKING:
    from store.gateways.nbd.service import ImageGateway

REQUESTS = ("pread", "pwrite", "flush", "trim", "zero", "extents")
MODES = ("readonly", "writable")


class NbdStats:
    __slots__ = ("bytes", "connections", "latency", "opened", "requests")

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (request, result) -> count
        self.bytes: Counter[str] = Counter()  # request -> bytes read, written, trimmed...
        self.latency = {kind: LatencyHistogram() for kind in REQUESTS}
        self.connections: Counter[str] = Counter()  # mode -> open now
        self.opened: Counter[tuple[str, str]] = Counter()  # (mode, result) -> connections

    def answered(self, kind: str, result: str, seconds: float, length: int) -> None:
        """One request done; `length` (bytes it covered) counts only when it succeeded."""
        self.requests[(kind, result)] += 1
        self.latency[kind].observe(seconds)
        if result == "ok" and length:
            self.bytes[kind] += length


def nbd_families(gateway: ImageGateway) -> Iterator[Metric]:
    stats = gateway.stats
    settings = gateway.settings
    yield gauge(
        "store_nbd_image_info",
        "The image this gateway serves.",
        labels=["pool", "image"],
        samples=[((settings.pool, settings.image), 1)],
    )
    yield gauge("store_nbd_image_size_bytes", "Size of the image.", gateway.image.size)
    yield counter(
        "store_nbd_requests",
        "NBD requests served, by type and result (ok, or the errno the client got).",
        labels=["request", "result"],
        samples=sorted(stats.requests.items()),
    )
    yield counter(
        "store_nbd_request_bytes",
        "Bytes covered by successful requests: read, written, trimmed, zeroed.",
        labels=["request"],
        samples=[
            ((kind,), stats.bytes.get(kind, 0)) for kind in ("pread", "pwrite", "trim", "zero")
        ],
    )
    yield histogram(
        "store_nbd_request_latency_seconds",
        "Time the gateway took to serve a request, by type.",
        labels=["request"],
        samples=[((kind,), h) for kind, h in stats.latency.items() if h.count],
    )
    yield gauge(
        "store_nbd_connections",
        "NBD connections open now, by mode.",
        labels=["mode"],
        samples=[((mode,), stats.connections.get(mode, 0)) for mode in MODES],
    )
    yield counter(
        "store_nbd_connections_opened",
        "NBD connections opened, by mode and result (a writer may be refused the lock).",
        labels=["mode", "result"],
        samples=sorted(stats.opened.items()),
    )
    yield gauge(
        "store_nbd_writer_lock_held",
        "1 while this gateway holds the image's writer lock.",
        int(gateway.holding_lock),
    )


def nbd_collector(gateway: ImageGateway) -> ScrapeCollector:
    return ScrapeCollector(lambda: nbd_families(gateway), "nbd")
