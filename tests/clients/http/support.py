"""Small HTTP helpers over the standard library's http.client, and metrics scrapes."""

from __future__ import annotations

import http.client
import time
import urllib.parse

from tests.clients.http.conftest import TOKEN, Gateway
from tests.metric_samples import Samples, parse_samples, value


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.headers}, {self.body[:200]!r})"


def call(
    gateway: Gateway,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    token: str | None = TOKEN,
) -> Reply:
    """One request on a fresh connection; `token=None` sends no Authorization."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=120)
    try:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def path_of(pool: str, name: str) -> str:
    return f"/{urllib.parse.quote(pool)}/{urllib.parse.quote(name)}"


def scrape(gateway: Gateway) -> Samples:
    """Every sample of the gateway's /metrics: (name, labels) -> value."""
    status, body = gateway.metrics_get("/metrics")
    assert status == 200, body
    return parse_samples(body.decode())


def settled(gateway: Gateway, timeout: float = 30.0) -> Samples:
    """The metrics once no request is in flight: a download's bytes and latency are
    counted when the gateway hands over its last byte, which the client may have read
    a moment before."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(gateway)
        if value(samples, "store_http_requests_in_flight") == 0:
            return samples
        assert time.monotonic() < deadline, "requests still in flight"
        time.sleep(0.05)
