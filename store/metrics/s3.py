"""What the S3 gateway counts, and the families it exposes.

The request handler (``store.gateways.s3.handler``) counts into an :class:`S3Stats`:
requests by S3 operation and status, body bytes received and sent, latency by operation,
and refused authentications by reason — plain integers and ``Counter`` keys on the
request path, turned into families only at scrape time (see ``stats``). Everything runs
on the gateway's one trio thread, so nothing here locks. The cluster client's own
families come from ``store.metrics.client``.

Labels come from fixed sets, never from what a client sent: operations are the names of
the S3 API the router resolves to (``Invalid`` for a request it could not route), and
reasons are the S3 error codes authentication raises (``Anonymous`` for a request that
carried no credentials).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client.core import Metric

from store.gateways.web.messages import Request, Response
from store.metrics.families import ScrapeCollector, counter, counter_by
from store.metrics.stats import LatencyHistogram
from store.metrics.web import CountedBody, request_families

PREFIX = "store_s3"


class S3Stats:
    __slots__ = (
        "auth_failures",
        "cut_short",
        "in_flight",
        "latency",
        "received_bytes",
        "requests",
        "sent_bytes",
    )

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (operation, status) -> count
        self.latency: dict[str, LatencyHistogram] = {}  # operation -> histogram
        self.received_bytes = 0
        self.sent_bytes = 0
        self.in_flight = 0
        self.cut_short: Counter[str] = Counter()  # stage -> requests
        self.auth_failures: Counter[str] = Counter()  # reason -> requests

    def started(self) -> None:
        self.in_flight += 1

    def abandoned(self) -> None:
        """The client left (or the server stopped) before the request was answered."""
        self.in_flight -= 1
        self.cut_short["request"] += 1

    def auth_failed(self, reason: str) -> None:
        self.auth_failures[reason] += 1

    def answered(
        self,
        operation: str,
        request: Request,
        response: Response,
        started: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> Response:
        """Count `response` to `request`; its latency runs to the last byte of its body,
        so a streamed body is wrapped to report when it ends. Returns the response."""
        self.requests[(operation, response.status)] += 1
        self.received_bytes += request.body.bytes_read

        def ended(sent: int, whole: bool) -> None:
            self.in_flight -= 1
            if not whole:
                self.cut_short["response"] += 1
            histogram = self.latency.get(operation)
            if histogram is None:
                histogram = self.latency[operation] = LatencyHistogram()
            histogram.observe(clock() - started)
            self.sent_bytes += sent

        body = response.body
        if request.method == "HEAD" or response.status in (204, 304):
            ended(0, True)  # the server sends no body
        elif isinstance(body, bytes | bytearray | memoryview):
            ended(len(body), True)
        else:
            response.body = CountedBody(body, ended)
        return response


def s3_families(stats: S3Stats, freed: Callable[[], int]) -> Iterator[Metric]:
    yield from request_families(
        PREFIX,
        stats,
        label="operation",
        requests_help="S3 requests answered, by operation and HTTP status.",
        body_help="Bytes of request bodies read (as sent, signatures of aws-chunked bodies "
        "included) and of response bodies sent.",
    )
    yield counter_by(
        f"{PREFIX}_auth_failures",
        "Requests refused at authentication, by reason (the S3 error code, or Anonymous).",
        "reason",
        stats.auth_failures,
    )
    yield counter(
        f"{PREFIX}_gc_freed_objects",
        "Data objects of overwritten and deleted objects this gateway's collector freed.",
        freed(),
    )


def s3_collector(stats: S3Stats, freed: Callable[[], int]) -> ScrapeCollector:
    return ScrapeCollector(lambda: s3_families(stats, freed), "s3")
