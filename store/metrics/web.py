"""Requests served over HTTP by a gateway: by method and status, body bytes, latency.

:func:`metered` wraps a handler of :mod:`store.gateways.web` and counts into a
:class:`RequestStats` (plain integers, see ``stats``); :func:`request_families` turns the
counts into families at scrape time, under the prefix of the process (``store_http``).

A request is counted when its handler returns (or fails): its method and the status the
server sends, the request body bytes the handler read. Its latency runs from the call of
the handler to the last byte of the response body handed to the connection, so a
download is timed whole; a body that stops before its end (the client left, the cluster
failed mid-way) is counted as cut short. A request the client abandons before it is
answered has no status: it is counted as cut short at the ``request`` stage. (The bodies
of the error pages the server writes itself, for a handler that failed, are not counted.)

Methods are labelled from a fixed list (anything else is ``other``), so a client cannot
grow the number of series.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from typing import Protocol

from prometheus_client.core import Metric

from store.errors import single_error
from store.gateways.web.messages import (
    BodyTooLarge,
    Chunk,
    ClientDisconnected,
    Handler,
    MalformedBody,
    Request,
    Response,
)
from store.metrics.families import counter, counter_by, gauge, histogram
from store.metrics.stats import LatencyHistogram

METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
_KNOWN = frozenset(METHODS)
STAGES = ("request", "response")


def method_label(method: str) -> str:
    return method if method in _KNOWN else "other"


def failure_status(exc: BaseException) -> int | None:
    """The status the server answers when a handler raises `exc` (None: no answer).

    The same choice ``store.gateways.web.connection`` makes: the client left (no answer),
    a body too large (413) or malformed (400), anything else 500."""
    inner = single_error(exc) if isinstance(exc, Exception) else exc
    if isinstance(inner, ClientDisconnected):
        return None
    if isinstance(inner, BodyTooLarge):
        return 413
    if isinstance(inner, MalformedBody):
        return 400
    if isinstance(inner, Exception):
        return 500
    return None  # cancelled: the server is stopping


class RequestStats:
    __slots__ = ("cut_short", "in_flight", "latency", "received_bytes", "requests", "sent_bytes")

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (method label, status)
        self.latency: dict[str, LatencyHistogram] = {}
        self.received_bytes = 0
        self.sent_bytes = 0
        self.in_flight = 0
        self.cut_short: Counter[str] = Counter()  # stage -> requests

    def answered(self, method: str, status: int, received: int) -> None:
        self.requests[(method, status)] += 1
        self.received_bytes += received

    def finished(self, method: str, seconds: float, sent: int) -> None:
        histogram = self.latency.get(method)
        if histogram is None:
            histogram = self.latency[method] = LatencyHistogram()
        histogram.observe(seconds)
        self.sent_bytes += sent


def metered(
    handler: Handler, stats: RequestStats, clock: Callable[[], float] = time.monotonic
) -> Handler:
    """`handler`, counting every request it serves into `stats`."""

    async def handle(request: Request) -> Response:
        method = method_label(request.method)
        started = clock()
        stats.in_flight += 1
        try:
            response = await handler(request)
        except BaseException as exc:
            stats.in_flight -= 1
            status = failure_status(exc)
            if status is None:
                stats.cut_short["request"] += 1
            else:
                stats.answered(method, status, request.body.bytes_read)
                stats.finished(method, clock() - started, 0)
            raise
        stats.answered(method, response.status, request.body.bytes_read)

        def ended(sent: int, whole: bool) -> None:
            stats.in_flight -= 1
            if not whole:
                stats.cut_short["response"] += 1
            stats.finished(method, clock() - started, sent)

        body = response.body
        if request.method == "HEAD" or response.status in (204, 304):
            ended(0, True)  # the server sends no body
        elif isinstance(body, bytes | bytearray | memoryview):
            ended(len(body), True)
        else:
            response.body = CountedBody(body, ended)
        return response

    return handle


class CountedBody:
    """A streamed response body that reports, once, how many bytes the connection took
    and whether it took all of them: at its end, at a failure, when it is closed early,
    or at the latest when it is dropped unclosed (a connection that fails before the body
    starts). A class, not an async generator: a generator closed before its first step
    never runs its clean-up."""

    def __init__(self, inner: AsyncIterable[Chunk], ended: Callable[[int, bool], None]) -> None:
        self._inner = inner
        self._iterator: AsyncIterator[Chunk] | None = None
        self._ended: Callable[[int, bool], None] | None = ended
        self._sent = 0
        self._pending = 0

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        # The connection asks for the next chunk once the previous one is sent.
        self._sent += self._pending
        self._pending = 0
        if self._iterator is None:
            self._iterator = aiter(self._inner)
        try:
            chunk = await anext(self._iterator)
        except StopAsyncIteration:
            self._end(True)
            raise
        except BaseException:
            self._end(False)
            raise
        self._pending = len(chunk)
        return chunk

    async def aclose(self) -> None:
        self._end(False)
        target = self._iterator if self._iterator is not None else self._inner
        aclose = getattr(target, "aclose", None)
        if aclose is not None:
            await aclose()

    def __del__(self) -> None:
        if getattr(self, "_ended", None) is not None:
            self._end(False)

    def _end(self, whole: bool) -> None:
        ended, self._ended = self._ended, None
        if ended is not None:
            ended(self._sent + (self._pending if whole else 0), whole)


class RequestCounts(Protocol):
    """What a gateway counts of the requests it serves (RequestStats, S3Stats)."""

    requests: Counter[tuple[str, int]]  # (label, status) -> requests answered
    latency: dict[str, LatencyHistogram]  # label -> time to the answer's last byte
    received_bytes: int
    sent_bytes: int
    in_flight: int
    cut_short: Counter[str]  # stage -> requests


def request_families(
    prefix: str,
    stats: RequestCounts,
    label: str = "method",
    requests_help: str = "Requests answered, by method and status.",
    body_help: str = "Bytes of request bodies read and of response bodies sent.",
) -> Iterator[Metric]:
    """The families of `stats`, named ``{prefix}_requests_total`` and so on, with
    requests told apart by `label` (the HTTP method, or the S3 operation)."""
    yield counter(
        f"{prefix}_requests",
        requests_help,
        labels=[label, "status"],
        samples=[((m, str(s)), n) for (m, s), n in sorted(stats.requests.items())],
    )
    yield histogram(
        f"{prefix}_request_latency_seconds",
        f"Time from a request's head to the last byte of its answer, by {label}.",
        labels=[label],
        samples=[((m,), h) for m, h in sorted(stats.latency.items())],
    )
    yield counter_by(
        f"{prefix}_body_bytes",
        body_help,
        "direction",
        {"received": stats.received_bytes, "sent": stats.sent_bytes},
    )
    yield gauge(
        f"{prefix}_requests_in_flight",
        "Requests being served now (handled, or their answer being sent).",
        stats.in_flight,
    )
    yield counter_by(
        f"{prefix}_requests_cut_short",
        "Requests the client left before their answer (request) or whose answer stopped "
        "before its end (response).",
        "stage",
        {stage: stats.cut_short.get(stage, 0) for stage in STAGES},
    )
