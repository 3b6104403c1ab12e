"""What the HTTP gateway exposes: its requests (``store.metrics.web``) and its collector.
The cluster client's own families come from ``store.metrics.client``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from store.metrics.families import ScrapeCollector, counter
from store.metrics.web import RequestStats, request_families

PREFIX = "store_http"


def http_families(stats: RequestStats, removed_uploads: Callable[[], int]) -> Iterator[Metric]:
    yield from request_families(PREFIX, stats)
    yield counter(
        f"{PREFIX}_gc_removed_uploads",
        "Uploads whose unreferenced stripes the collector removed.",
        removed_uploads(),
    )


def http_collector(stats: RequestStats, removed_uploads: Callable[[], int]) -> ScrapeCollector:
    return ScrapeCollector(lambda: http_families(stats, removed_uploads), "http")
