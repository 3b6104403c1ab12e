"""How the S3 gateway counts its requests, without sockets or a cluster: the handler driven
with requests made in memory (ones it refuses before touching the cluster), the counters
with a fake clock, and the families a scrape makes of them."""

from __future__ import annotations

from typing import cast

import pytest
import trio

from store.gateways.s3.backend import Backend
from store.gateways.s3.gateway import Gateway, Settings
from store.gateways.s3.handler import (
    carries_credentials,
    make_handler,
    operation_label,
)
from store.gateways.s3.process import GatewayState
from store.gateways.web.server import Response
from store.metrics.s3 import S3Stats, s3_collector
from store.metrics.web import CountedBody
from tests.clients.memory_requests import FakeClock, chunks, request
from tests.metric_samples import Samples, collected


def samples(stats: S3Stats, freed: int = 0) -> Samples:
    return collected(s3_collector(stats, lambda: freed))


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def test_refusals_are_counted_by_operation_status_and_reason() -> None:
    clock = FakeClock()
    async with trio.open_nursery() as nursery:
        # These requests are refused before the cluster is asked anything.
        gateway = Gateway(cast(Backend, object()), Settings(), nursery)
        handle = make_handler(gateway, clock)
        anonymous = await handle(request("GET", "/"))
        presigned = await handle(request("GET", "/?X-Amz-Credential=garbage&X-Amz-Algorithm=x"))
        header = await handle(request("GET", "/", [("authorization", "Bearer abc")]))
        too_long = await handle(request("PUT", "/b/" + "k" * 1100))
        health = await handle(request("GET", "/healthz"))
    assert [r.status for r in (anonymous, presigned, header, too_long, health)] == [
        403,
        403,
        400,
        400,
        200,
    ]
    stats = gateway.stats
    assert stats.auth_failures == {
        "Anonymous": 1,
        "AuthorizationQueryParametersError": 1,
        "InvalidRequest": 1,
    }
    # /healthz is not counted; a request the router refuses is an Invalid one.
    assert stats.requests == {("ListBuckets", 403): 2, ("ListBuckets", 400): 1, ("Invalid", 400): 1}
    assert stats.in_flight == 0 and stats.received_bytes == 0
    sent = sum(len(cast(bytes, r.body)) for r in (anonymous, presigned, header, too_long))
    assert stats.sent_bytes == sent
    found = samples(stats)
    failures = "store_s3_auth_failures_total"
    assert found[key(failures, reason="Anonymous")] == 1
    assert found[key("store_s3_requests_total", operation="Invalid", status="400")] == 1
    assert found[key("store_s3_request_latency_seconds_count", operation="ListBuckets")] == 3
    assert found[key("store_s3_body_bytes_total", direction="sent")] == sent


async def test_a_streamed_answer_is_timed_and_counted_to_its_last_byte() -> None:
    stats, clock = S3Stats(), FakeClock()
    stats.started()
    response = stats.answered(
        "GetObject",
        request("GET", "/b/k"),
        Response(200, [], chunks(b"abcd", b"efghij")),
        clock(),
        clock,
    )
    assert isinstance(response.body, CountedBody) and stats.in_flight == 1
    async for _ in response.body:
        clock.now += 0.25
    await response.body.aclose()
    assert stats.sent_bytes == 10 and stats.in_flight == 0
    assert stats.latency["GetObject"].total == pytest.approx(0.5)

    stats.started()
    put = request("PUT", "/b/k", received=1234)
    stats.answered("PutObject", put, Response(200, [], b""), clock(), clock)
    stats.started()
    stats.answered("HeadObject", request("HEAD", "/b/k"), Response(200, [], b"xx"), clock(), clock)
    stats.started()
    stats.abandoned()
    assert stats.received_bytes == 1234 and stats.sent_bytes == 10
    assert stats.cut_short == {"request": 1} and stats.in_flight == 0
    found = samples(stats, freed=7)
    assert found[key("store_s3_body_bytes_total", direction="received")] == 1234
    assert found[key("store_s3_requests_cut_short_total", stage="request")] == 1
    assert found[key("store_s3_requests_cut_short_total", stage="response")] == 0
    assert found[key("store_s3_gc_freed_objects_total")] == 7
    assert found[key("store_s3_requests_in_flight")] == 0


def test_labels_come_from_fixed_sets() -> None:
    assert operation_label("PutObject") == "PutObject"
    assert operation_label("MethodNotAllowed") == "MethodNotAllowed"
    assert operation_label("GetBucketCors") == "GetBucketCors"
    assert operation_label("anything a client made up") == "NotImplemented"
    assert carries_credentials(request("GET", "/?AWSAccessKeyId=x"))
    assert carries_credentials(request("GET", "/?X-Amz-%41lgorithm=x"))
    assert carries_credentials(request("GET", "/", [("authorization", "x")]))
    assert not carries_credentials(request("GET", "/?list-type=2&%zz=1"))


def test_readiness_follows_the_start() -> None:
    state = GatewayState()
    assert state.not_ready() == "connecting to the cluster: no cluster map yet"
    assert state.freed() == 0
