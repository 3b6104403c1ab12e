"""The S3 gateway as a running process: the metrics port, the cluster client, the pool,
the listener and the collector, started in that order.

The metrics port (``--metrics HOST:PORT``) comes up first, so ``/healthz`` answers while
the gateway connects; ``/readyz`` answers 200 once the cluster map is known, the pool
exists and the gateway listens. The handler counts requests into the process's
:class:`S3Stats` (plain counters on the request path, families built at scrape).
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
from store.gateways.s3.backend import Backend
from store.gateways.s3.gateway import Gateway, Settings
from store.gateways.s3.handler import make_handler
from store.gateways.s3.pool import ensure_pool
from store.gateways.web.server import serve
from store.metrics.client import client_collector
from store.metrics.endpoint import open_metrics
from store.metrics.s3 import S3Stats, s3_collector

log = logging.getLogger("store.s3")


@dataclass(frozen=True)
class ProcessSettings:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    pool: str
    pool_size: int | None
    pool_pg_num: int
    gateway: Settings
    metrics: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz, /config
    running_config: dict[str, Any] | None = None  # what /config shows (secrets masked)


class GatewayState:
    """What the metrics port reads, filled in as the gateway starts."""

    def __init__(self) -> None:
        self.stats = S3Stats()
        self.client: Client | None = None
        self.gateway: Gateway | None = None
        self.port: int | None = None

    def not_ready(self) -> str | None:
        if self.client is None or self.client.master.map is None:
            return "connecting to the cluster: no cluster map yet"
        if self.gateway is None:
            return "looking for the pool (or creating it)"
        if self.port is None:
            return "not listening yet"
        return None

    def freed(self) -> int:
        return self.gateway.collector.freed if self.gateway is not None else 0


async def run_gateway(
    config: ClientConfig, settings: ProcessSettings, state: GatewayState | None = None
) -> None:
    state = state if state is not None else GatewayState()
    async with trio.open_nursery() as nursery:
        endpoint = await open_metrics(
            nursery,
            settings.metrics,
            "s3",
            collectors=[s3_collector(state.stats, state.freed)],
            ready=state.not_ready,
            config=settings.running_config,
        )
        async with Client.connect(config) as client, trio.open_nursery() as work:
            state.client = client
            if endpoint is not None:
                endpoint.add(client_collector(client))
            await ensure_pool(client, settings.pool, settings.pool_size, settings.pool_pg_num)
            gateway = Gateway(Backend(client, settings.pool), settings.gateway, work, state.stats)
            state.gateway = gateway
            work.start_soon(gateway.collector.run)
            state.port = await work.start(
                functools.partial(
                    serve,
                    make_handler(gateway),
                    settings.host,
                    settings.port,
                    ssl_context=settings.ssl_context,
                )
            )
            log.info(
                "S3 gateway on %s://%s:%d (pool %s, region %s)",
                "https" if settings.ssl_context else "http",
                settings.host,
                state.port,
                settings.pool,
                settings.gateway.region,
            )
        nursery.cancel_scope.cancel()
