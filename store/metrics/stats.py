"""Plain counters for hot paths, and the histogram they time with.

Theory of operation
-------------------
A daemon serves a datagram in tens of microseconds; a ``prometheus_client`` metric costs a
lock and, with labels, a dictionary lookup under it on every increment. So the code on the
data path counts into plain Python integers, ``collections.Counter`` keys and the
:class:`LatencyHistogram` below — a list of integers and one ``bisect`` — and nothing else.
A scrape reads them once and turns them into Prometheus families
(``store.metrics.families``). Everything runs on one trio thread, so nothing here locks;
the rare counter bumped from another thread (the disk writer) keeps its own lock where it
lives.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Seconds. From a read served from the page cache to a write that waits for a slow replica.
LATENCY_BOUNDS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class LatencyHistogram:
    """Counts of observations per bucket, as Prometheus histograms define them: a value
    falls into the first bucket whose upper bound is at least the value."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("bucket bounds must be distinct and increasing")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count of observations <= le)`` pairs, ending with ``+Inf``."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else _bound_text(bound), running))
        return out

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None without data)."""
        n = self.count
        if n == 0:
            return None
        rank = q * n
        running = 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += c
            if running >= rank and c:
                return bound
        return float("inf")


def _bound_text(bound: float) -> str:
    # The text Prometheus clients use for `le`: shortest float repr.
    return repr(float(bound))
