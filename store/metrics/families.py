"""Prometheus metric families built at scrape time from plain counters.

Collectors (``store.metrics.osd``, ``.master``, ``.client``) are functions that yield
families; :class:`ScrapeCollector` adapts one to ``prometheus_client``'s registry and keeps
a fault in one of them from failing the whole scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from store.metrics.stats import LatencyHistogram

log = logging.getLogger("store.metrics")

LabelValues = Sequence[str]


def counter(
    name: str,
    doc: str,
    value: float | None = None,
    *,
    labels: Sequence[str] = (),
    samples: Iterable[tuple[LabelValues, float]] = (),
) -> CounterMetricFamily:
    """A counter family; `name` without `_total` (the exposition adds it)."""
    family = CounterMetricFamily(name, doc, labels=list(labels))
    if value is not None:
        family.add_metric([], value)
    for label_values, v in samples:
        family.add_metric(list(label_values), v)
    return family


def counter_by(name: str, doc: str, label: str, counts: Mapping[str, float]) -> CounterMetricFamily:
    return counter(name, doc, labels=[label], samples=(([k], v) for k, v in sorted(counts.items())))


def gauge(
    name: str,
    doc: str,
    value: float | None = None,
    *,
    labels: Sequence[str] = (),
    samples: Iterable[tuple[LabelValues, float]] = (),
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    if value is not None:
        family.add_metric([], value)
    for label_values, v in samples:
        family.add_metric(list(label_values), v)
    return family


def gauge_by(name: str, doc: str, label: str, values: Mapping[str, float]) -> GaugeMetricFamily:
    return gauge(name, doc, labels=[label], samples=(([k], v) for k, v in sorted(values.items())))


def histogram(
    name: str,
    doc: str,
    *,
    labels: Sequence[str] = (),
    samples: Iterable[tuple[LabelValues, LatencyHistogram]] = (),
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for label_values, h in samples:
        family.add_metric(list(label_values), h.cumulative(), h.total)
    return family


class ScrapeCollector:
    """A registry collector calling `fn` at each scrape; a failure costs only its families."""

    def __init__(self, fn: Callable[[], Iterable[Metric]], name: str) -> None:
        self._fn = fn
        self.name = name

    def collect(self) -> Iterator[Metric]:
        try:
            families = list(self._fn())
        except Exception:
            log.exception("collecting the %s metrics failed", self.name)
            return
        yield from families
