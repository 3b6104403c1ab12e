"""The S3 gateway as a running process: the metrics port, the cluster client, the pool,
the collector and the listener (``store.gateways.process`` starts them, in that order).

``/readyz`` answers 200 once the cluster map is known, the pool exists and the gateway
listens. The handler counts requests into the process's :class:`S3Stats` (plain counters
on the request path, families built at scrape).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from store.client.config import ClientConfig
from store.gateways.process import ProcessSettings, ProcessState, start_gateway
from store.gateways.s3.backend import Backend
from store.gateways.s3.gateway import Gateway, Settings
from store.gateways.s3.handler import make_handler
from store.gateways.s3.pool import ensure_pool
from store.metrics.s3 import S3Stats, s3_collector

log = logging.getLogger("store.s3")


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(ProcessSettings):
    pool: str
    pool_size: int | None
    pool_pg_num: int
    gateway: Settings


class GatewayState(ProcessState):
    """What the metrics port reads, filled in as the gateway starts."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = S3Stats()
        self.gateway: Gateway | None = None

    def setting_up(self) -> str | None:
        if self.gateway is None:
            return "looking for the pool (or creating it)"
        return None

    def freed(self) -> int:
        return self.gateway.collector.freed if self.gateway is not None else 0


async def run_gateway(
    config: ClientConfig, settings: GatewaySettings, state: GatewayState | None = None
) -> None:
    state = state if state is not None else GatewayState()
    collectors = [s3_collector(state.stats, state.freed)]
    async with start_gateway(config, settings, "s3", state, collectors) as started:
        client = started.client
        await ensure_pool(client, settings.pool, settings.pool_size, settings.pool_pg_num)
        gateway = Gateway(
            Backend(client, settings.pool), settings.gateway, started.nursery, state.stats
        )
        state.gateway = gateway
        started.nursery.start_soon(gateway.collector.run)
        port = await started.listen(make_handler(gateway))
        log.info(
            "S3 gateway on %s://%s:%d (pool %s, region %s)",
            settings.scheme,
            settings.host,
            port,
            settings.pool,
            settings.gateway.region,
        )
