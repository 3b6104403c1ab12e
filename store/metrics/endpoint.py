"""The metrics port of a process: ``/metrics``, ``/healthz``, ``/readyz`` and ``/config``.

One call adds it to any trio process (daemon, master, gateway)::

    endpoint = await start_metrics(
        nursery, "0.0.0.0:9101", "s3",                  # None as the address: no endpoint
        collectors=[client_collector(client)],           # store.metrics.client
        ready=lambda: None if client.master.map else "no map yet",
        config=configfile.document(click_context, "s3"), # secrets already masked
    )

A process that brings the port up before anything else (the gateways) serves it for the
duration of a block instead: ``async with serving_metrics(address, role, ...) as endpoint``.

``/healthz`` answers 200 whenever the process's event loop does (liveness: restart me if
this fails); ``/readyz`` answers 200 when `ready()` returns None and 503 with its reason
otherwise (readiness: do not send me work yet). ``/config`` shows the process's effective
configuration as JSON, the same document ``store config show`` prints.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from importlib import metadata
from typing import Any

import trio
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from store.errors import ConfigError, single_error
from store.gateways.web.server import Request, Response, serve
from store.metrics.families import ScrapeCollector
from store.rpc import parse_hostport

log = logging.getLogger("store.metrics")

ReadyCheck = Callable[[], str | None]


def _version() -> str:
    try:
        return metadata.version("store")
    except metadata.PackageNotFoundError:
        return "unknown"


class MetricsEndpoint:
    def __init__(
        self,
        role: str,
        *,
        ready: ReadyCheck | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.role = role
        self.ready = ready
        self.config = dict(config) if config is not None else None
        self.port: int | None = None
        self.started = time.time()
        # A registry of our own: the process-wide default one would mix in whatever else
        # a library registers, and tests run several in one interpreter.
        self.registry = CollectorRegistry(auto_describe=False)
        for shared in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(shared)
        self.add(ScrapeCollector(self._info, "build"))

    def add(self, collector: ScrapeCollector) -> None:
        self.registry.register(collector)

    def _info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "store_build_info", "Version and role of this process.", labels=["version", "role"]
        )
        info.add_metric([_version(), self.role], 1)
        yield info
        yield GaugeMetricFamily(
            "store_process_started_seconds",
            "Unix time this process started serving.",
            value=self.started,
        )

    # --- HTTP ------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return _text(405, "only GET and HEAD\n", [("Allow", "GET, HEAD")])
        path = request.path
        if path == "/metrics":
            encoder, content_type = choose_encoder(request.header("accept") or "")
            return Response(200, [("Content-Type", content_type)], encoder(self.registry))
        if path == "/healthz":
            return _text(200, "ok\n")
        if path == "/readyz":
            reason = self._not_ready()
            return _text(200, "ready\n") if reason is None else _text(503, f"{reason}\n")
        if path == "/config":
            if self.config is None:
                return _text(404, "this process publishes no configuration\n")
            body = json.dumps(self.config, indent=2, sort_keys=True, default=str).encode()
            return Response(200, [("Content-Type", "application/json")], body)
        if path == "/":
            return _text(200, "store " + self.role + ": /metrics /healthz /readyz /config\n")
        return _text(404, "not found: try /metrics, /healthz, /readyz or /config\n")

    def _not_ready(self) -> str | None:
        if self.ready is None:
            return None
        try:
            return self.ready()
        except Exception as exc:  # a broken check must not break the endpoint
            log.exception("readiness check failed")
            return f"readiness check failed: {exc}"

    async def serve(
        self, address: str, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        host, port = parse_hostport(address)

        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(
                functools.partial(serve, self.handle, host, port, idle_timeout=30.0)
            )
            log.info("metrics at http://%s:%d/metrics", _url_host(host), self.port)
            task_status.started(self.port)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _text(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])],
        text.encode(),
    )


async def start_metrics(
    nursery: trio.Nursery,
    address: str | None,
    role: str,
    *,
    collectors: Iterable[ScrapeCollector] = (),
    ready: ReadyCheck | None = None,
    config: Mapping[str, Any] | None = None,
) -> MetricsEndpoint | None:
    """Serve the metrics port at `address` (HOST:PORT) in `nursery`; None when not asked.

    Returns once the port is bound; ``endpoint.port`` is the bound port."""
    if not address:
        return None
    endpoint = MetricsEndpoint(role, ready=ready, config=config)
    for collector in collectors:
        endpoint.add(collector)
    await nursery.start(functools.partial(endpoint.serve, address))
    return endpoint


@asynccontextmanager
async def serving_metrics(
    address: str | None,
    role: str,
    *,
    collectors: Iterable[ScrapeCollector] = (),
    ready: ReadyCheck | None = None,
    config: Mapping[str, Any] | None = None,
) -> AsyncIterator[MetricsEndpoint | None]:
    """:func:`start_metrics` for the duration of a block, in a nursery of its own: the port
    answers from before the block starts until it ends (for processes that bring the port
    up first, so that ``/healthz`` and ``/readyz`` answer while the rest starts).

    An address that cannot be served is a ConfigError that names it (for processes that
    report errors to an operator, not a traceback)."""
    async with trio.open_nursery() as nursery:
        try:
            try:
                endpoint = await start_metrics(
                    nursery, address, role, collectors=collectors, ready=ready, config=config
                )
            except (OSError, ValueError, BaseExceptionGroup) as exc:
                inner = single_error(exc)
                if isinstance(inner, ValueError):
                    raise ConfigError(f"metrics address {address!r}: {inner}") from None
                if isinstance(inner, OSError):
                    reason = inner.strerror or str(inner)
                    raise ConfigError(f"cannot serve metrics on {address}: {reason}") from None
                raise
            yield endpoint
        finally:
            nursery.cancel_scope.cancel()
