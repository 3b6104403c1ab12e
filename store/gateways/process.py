"""How a gateway that serves HTTP (the HTTP and the S3 gateway) starts as a process: the
metrics port, the cluster client, the gateway's own set-up, the listener, in that order.

The metrics port (``--metrics HOST:PORT``) comes up first, so ``/healthz`` answers while
the gateway connects; the cluster client's counters join it once the client exists.
``/readyz`` answers 200 once the cluster map is known, the gateway's own set-up is done
(:meth:`ProcessState.setting_up`) and the gateway listens; until then it says which of
these it still waits for. A gateway's ``run_gateway`` reads::

    async with start_gateway(config, settings, "s3", state, collectors) as started:
        ...                                 # its own set-up: started.client, started.nursery
        port = await started.listen(handler)
        log.info(...)                       # ready

The block ends once the gateway listens; the process then serves until it is cancelled,
its listener and the gateway's own tasks running in ``started.nursery``.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from store.client.api import Client
from store.client.config import ClientConfig
from store.gateways.web.server import Handler, serve
from store.gateways.workers import WorkerSlot, announce_ready
from store.metrics.client import client_collector
from store.metrics.endpoint import serving_metrics
from store.metrics.families import ScrapeCollector


@dataclass(frozen=True, kw_only=True)
class ProcessSettings:
    """What every gateway process is told: where to listen, with which certificate (None:
    plain HTTP), and its metrics port. A gateway's settings add their own to these."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    metrics: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz, /config
    worker: WorkerSlot | None = None  # one worker of several on the port (--workers)
    running_config: dict[str, Any] | None = None  # what /config shows (secrets masked)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"


class ProcessState:
    """What the metrics port reads, filled in as the gateway starts."""

    def __init__(self) -> None:
        self.client: Client | None = None
        self.port: int | None = None

    def not_ready(self) -> str | None:
        if self.client is None or self.client.master.map is None:
            return "connecting to the cluster: no cluster map yet"
        waiting = self.setting_up()
        if waiting is not None:
            return waiting
        if self.port is None:
            return "not listening yet"
        return None

    def setting_up(self) -> str | None:
        """What the gateway still sets up between connecting and listening, if anything."""
        return None


class StartedGateway:
    """A gateway process that is connected to the cluster and does not listen yet."""

    def __init__(
        self,
        client: Client,
        nursery: trio.Nursery,
        settings: ProcessSettings,
        state: ProcessState,
    ) -> None:
        self.client = client
        self.nursery = nursery  # runs until the process is cancelled
        self._settings = settings
        self._state = state

    async def listen(self, handler: Handler) -> int:
        """Serve `handler` on the settings' address; returns the port, once bound."""
        settings = self._settings
        port: int = await self.nursery.start(
            functools.partial(
                serve,
                handler,
                settings.host,
                settings.port,
                ssl_context=settings.ssl_context,
                reuse_port=settings.worker is not None,
            )
        )
        self._state.port = port
        if settings.worker is not None:
            announce_ready(settings.worker)
        return port


@asynccontextmanager
async def start_gateway(
    config: ClientConfig,
    settings: ProcessSettings,
    role: str,
    state: ProcessState,
    collectors: Iterable[ScrapeCollector],
) -> AsyncIterator[StartedGateway]:
    """Serve the metrics port (when asked) with the gateway's `collectors`, connect to the
    cluster, and hand the block what the gateway needs to set itself up and listen."""
    async with (
        serving_metrics(
            settings.metrics,
            role,
            collectors=collectors,
            ready=state.not_ready,
            config=settings.running_config,
        ) as endpoint,
        Client.connect(config) as client,
        trio.open_nursery() as nursery,
    ):
        state.client = client
        if endpoint is not None:
            endpoint.add(client_collector(client))
        yield StartedGateway(client, nursery, settings, state)
