"""The HTTP gateway as a running process: the metrics port, the cluster client, the
collector and the listener (``store.gateways.process`` starts them, in that order).

``/readyz`` answers 200 once the cluster map is known and the gateway listens. Requests
are counted by wrapping the gateway's handler (``store.metrics.web``): plain counters on
the request path, families built at scrape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from store.client.config import ClientConfig
from store.gateways.http.access import AccessPolicy
from store.gateways.http.collector import Collector
from store.gateways.http.gateway import HttpGateway
from store.gateways.http.storage import HttpObjects
from store.gateways.process import ProcessSettings, ProcessState, start_gateway
from store.metrics.http import http_collector
from store.metrics.web import RequestStats, metered

log = logging.getLogger("store.http")


@dataclass(frozen=True, kw_only=True)
class GatewaySettings(ProcessSettings):
    policy: AccessPolicy
    max_object_size: int
    gc_interval: float
    upload_lease: float
    read_grace: float


class GatewayState(ProcessState):
    """What the metrics port reads, filled in as the gateway starts."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = RequestStats()
        self.collector: Collector | None = None

    def removed_uploads(self) -> int:
        return self.collector.removed_uploads if self.collector is not None else 0


async def run_gateway(
    config: ClientConfig, settings: GatewaySettings, state: GatewayState | None = None
) -> None:
    state = state if state is not None else GatewayState()
    collectors = [http_collector(state.requests, state.removed_uploads)]
    async with start_gateway(config, settings, "http", state, collectors) as started:
        objects = HttpObjects(
            started.client,
            started.nursery,
            upload_lease=settings.upload_lease,
            read_grace=settings.read_grace,
        )
        gateway = HttpGateway(objects, settings.policy, max_object_size=settings.max_object_size)
        state.collector = Collector(objects)
        started.nursery.start_soon(state.collector.run, settings.gc_interval)
        port = await started.listen(metered(gateway.handle, state.requests))
        log.info("HTTP gateway ready at %s://%s:%d/", settings.scheme, settings.host, port)
