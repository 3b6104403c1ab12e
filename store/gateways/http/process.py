"""The HTTP gateway as a running process: the metrics port, the cluster client, the
listener and the collector, started in that order.

The metrics port (``--metrics HOST:PORT``) comes up first, so ``/healthz`` answers while
the gateway connects; ``/readyz`` answers 200 once the cluster map is known and the
gateway listens. Requests are counted by wrapping the gateway's handler
(``store.metrics.web``): plain counters on the request path, families built at scrape.
"""

from __future__ import annotations

import functools
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import trio

from store.client.api import Client
from store.client.config import ClientConfig
from store.gateways.http.access import AccessPolicy
from store.gateways.http.collector import Collector
from store.gateways.http.gateway import HttpGateway
from store.gateways.http.storage import HttpObjects
from store.gateways.web.server import serve
from store.metrics.client import client_collector
from store.metrics.endpoint import open_metrics
from store.metrics.http import http_collector
from store.metrics.web import RequestStats, metered

log = logging.getLogger("store.http")


@dataclass(frozen=True)
class GatewaySettings:
    host: str
    port: int
    policy: AccessPolicy
    ssl_context: ssl.SSLContext | None
    max_object_size: int
    gc_interval: float
    upload_lease: float
    read_grace: float
    metrics: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz, /config
    running_config: dict[str, Any] | None = None  # what /config shows (secrets masked)


class GatewayState:
    """What the metrics port reads, filled in as the gateway starts."""

    def __init__(self) -> None:
        self.requests = RequestStats()
        self.client: Client | None = None
        self.collector: Collector | None = None
        self.port: int | None = None

    def not_ready(self) -> str | None:
        if self.client is None or self.client.master.map is None:
            return "connecting to the cluster: no cluster map yet"
        if self.port is None:
            return "not listening yet"
        return None

    def removed_uploads(self) -> int:
        return self.collector.removed_uploads if self.collector is not None else 0


async def run_gateway(
    config: ClientConfig, settings: GatewaySettings, state: GatewayState | None = None
) -> None:
    state = state if state is not None else GatewayState()
    async with trio.open_nursery() as nursery:
        endpoint = await open_metrics(
            nursery,
            settings.metrics,
            "http",
            collectors=[http_collector(state.requests, state.removed_uploads)],
            ready=state.not_ready,
            config=settings.running_config,
        )
        async with Client.connect(config) as client, trio.open_nursery() as work:
            state.client = client
            if endpoint is not None:
                endpoint.add(client_collector(client))
            objects = HttpObjects(
                client, work, upload_lease=settings.upload_lease, read_grace=settings.read_grace
            )
            gateway = HttpGateway(
                objects, settings.policy, max_object_size=settings.max_object_size
            )
            state.collector = Collector(objects)
            work.start_soon(state.collector.run, settings.gc_interval)
            state.port = await work.start(
                functools.partial(
                    serve,
                    metered(gateway.handle, state.requests),
                    settings.host,
                    settings.port,
                    ssl_context=settings.ssl_context,
                )
            )
            scheme = "https" if settings.ssl_context else "http"
            log.info("HTTP gateway ready at %s://%s:%d/", scheme, settings.host, state.port)
        nursery.cancel_scope.cancel()
