"""How the HTTP gateway counts its requests, without sockets: a handler wrapped by
`store.metrics.web.metered`, driven with requests made in memory and a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from store.gateways.http.process import GatewayState
from store.gateways.web.server import (
    BodyTooLarge,
    ClientDisconnected,
    MalformedBody,
    Request,
    Response,
)
from store.metrics.http import http_collector
from store.metrics.web import CountedBody, RequestStats, failure_status, metered, method_label
from tests.clients.memory_requests import FakeClock, chunks, request
from tests.metric_samples import Samples, collected


def samples(stats: RequestStats, removed: int = 0) -> Samples:
    return collected(http_collector(stats, lambda: removed))


async def test_bytes_answers_are_counted_when_the_handler_returns() -> None:
    stats, clock = RequestStats(), FakeClock()

    async def handler(req: Request) -> Response:
        clock.now += 0.003
        return Response(201, [], b"created\n")

    handle = metered(handler, stats, clock)
    await handle(request("PUT", received=5000))
    assert stats.requests == {("PUT", 201): 1}
    assert (stats.received_bytes, stats.sent_bytes, stats.in_flight) == (5000, 8, 0)
    assert stats.latency["PUT"].count == 1 and stats.latency["PUT"].total == pytest.approx(0.003)
    found = samples(stats, removed=3)
    assert (
        found[("store_http_requests_total", frozenset({("method", "PUT"), ("status", "201")}))] == 1
    )
    assert found[("store_http_body_bytes_total", frozenset({("direction", "received")}))] == 5000
    assert found[("store_http_body_bytes_total", frozenset({("direction", "sent")}))] == 8
    bucket = frozenset({("method", "PUT"), ("le", "0.005")})
    assert found[("store_http_request_latency_seconds_bucket", bucket)] == 1
    assert found[("store_http_gc_removed_uploads_total", frozenset())] == 3
    assert found[("store_http_requests_in_flight", frozenset())] == 0


async def test_a_streamed_answer_is_timed_to_its_last_byte() -> None:
    stats, clock = RequestStats(), FakeClock()

    async def handler(req: Request) -> Response:
        return Response(200, [("Content-Length", "10")], chunks(b"abcd", b"efghij"))

    response = await metered(handler, stats, clock)(request("GET"))
    assert stats.requests == {("GET", 200): 1} and stats.in_flight == 1
    assert isinstance(response.body, CountedBody)
    got = []
    async for chunk in response.body:
        clock.now += 0.5
        got.append(chunk)
    await response.body.aclose()  # what the connection does after the end
    assert b"".join(got) == b"abcdefghij"
    assert stats.sent_bytes == 10 and stats.in_flight == 0
    assert stats.latency["GET"].total == pytest.approx(1.0)
    assert stats.cut_short == {}


async def test_an_answer_stopped_early_is_cut_short() -> None:
    stats = RequestStats()

    async def handler(req: Request) -> Response:
        return Response(200, [], chunks(b"1234", b"5678", b"9"))

    response = await metered(handler, stats)(request("GET"))
    assert isinstance(response.body, CountedBody)
    iterator = aiter(response.body)
    await anext(iterator)
    await anext(iterator)  # asking for the second means the first was sent
    await response.body.aclose()  # the client went away while the second was sent
    assert stats.sent_bytes == 4
    assert stats.cut_short == {"response": 1} and stats.in_flight == 0
    await response.body.aclose()  # once only
    assert stats.cut_short == {"response": 1} and stats.latency["GET"].count == 1


async def test_a_failing_body_and_a_dropped_one_are_cut_short() -> None:
    stats = RequestStats()

    async def broken() -> AsyncIterator[bytes]:
        yield b"abc"
        raise OSError("the cluster went away")

    async def handler(req: Request) -> Response:
        return Response(200, [], broken() if req.method == "GET" else chunks(b"x"))

    response = await metered(handler, stats)(request("GET"))
    iterator = aiter(response.body)  # type: ignore[arg-type]
    await anext(iterator)
    with pytest.raises(OSError):
        await anext(iterator)
    assert stats.cut_short == {"response": 1} and stats.sent_bytes == 3
    # A response whose connection failed before its body started, never closed.
    dropped = await metered(handler, stats)(request("POST"))
    assert stats.in_flight == 1
    del dropped
    assert stats.in_flight == 0 and stats.cut_short == {"response": 2}


async def test_no_body_is_counted_for_head_204_and_304() -> None:
    stats = RequestStats()

    async def handler(req: Request) -> Response:
        status = {"HEAD": 200, "DELETE": 204, "GET": 304}[req.method]
        return Response(status, [("Content-Length", "99")], chunks(b"never sent"))

    for method in ("HEAD", "DELETE", "GET"):
        response = await metered(handler, stats)(request(method))
        assert not isinstance(response.body, CountedBody)
    assert stats.sent_bytes == 0 and stats.in_flight == 0 and stats.cut_short == {}
    assert stats.requests == {("HEAD", 200): 1, ("DELETE", 204): 1, ("GET", 304): 1}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (ClientDisconnected("gone"), None),
        (BodyTooLarge(10), 413),
        (MalformedBody("bad chunk"), 400),
        (ExceptionGroup("nursery", [MalformedBody("bad chunk")]), 400),
        (RuntimeError("bug"), 500),
    ],
)
async def test_failed_handlers_count_the_status_the_server_sends(
    error: Exception, status: int | None
) -> None:
    assert failure_status(error) == status
    stats = RequestStats()

    async def handler(req: Request) -> Response:
        raise error

    with pytest.raises(type(error)):
        await metered(handler, stats)(request("PUT", received=7))
    assert stats.in_flight == 0
    if status is None:
        assert stats.cut_short == {"request": 1} and stats.requests == {}
    else:
        assert stats.requests == {("PUT", status): 1} and stats.received_bytes == 7


def test_methods_are_labelled_from_a_fixed_list() -> None:
    assert [method_label(m) for m in ("GET", "PUT", "PROPFIND", "get", "X" * 100)] == [
        "GET",
        "PUT",
        "other",
        "other",
        "other",
    ]


def test_readiness_of_a_starting_gateway() -> None:
    state = GatewayState()
    assert state.not_ready() == "connecting to the cluster: no cluster map yet"
    assert state.removed_uploads() == 0
