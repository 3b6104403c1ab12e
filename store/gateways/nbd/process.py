"""The plugin's trio side as a whole: the metrics port first, then the served image.

The metrics port (``metrics=HOST:PORT``) comes up before the cluster is reached, so
``/healthz`` answers at once and ``/readyz`` says what the gateway still waits for; the
gateway's and the cluster client's counters join it once they exist. It is served from
the plugin's trio thread, the thread that counts, so a scrape needs no lock.

``/config`` shows the configuration the gateway runs with. Started by ``store nbd
serve``, that is the command's settings with where each came from (its ``--config`` file,
the command line, ...): the command passes them, secrets masked, in the environment
variable :data:`DOCUMENT_VARIABLE` when it becomes nbdkit. Started by nbdkit directly, it
is the plugin's parameters.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from store.client.config import ClientConfig
from store.gateways.nbd.service import ImageGateway
from store.gateways.nbd.settings import DOCUMENT_VARIABLE, PluginSettings
from store.metrics.client import client_collector
from store.metrics.endpoint import serving_metrics
from store.metrics.nbd import nbd_collector

log = logging.getLogger("store.nbd")

MAX_DOCUMENT = 64 * 1024


def plugin_document(settings: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The configuration document of a plugin started by nbdkit itself."""
    return {
        "role": "nbd",
        "command": "nbdkit python (store nbd plugin)",
        "pid": os.getpid(),
        "started": time.time(),
        "config_file": None,
        "settings": dict(settings),
    }


def document_from_environment(text: str | None) -> dict[str, Any] | None:
    """The document `store nbd serve` left in the environment, if it is one."""
    if not text:
        return None
    if len(text) > MAX_DOCUMENT:
        log.warning("ignoring $%s: longer than %d bytes", DOCUMENT_VARIABLE, MAX_DOCUMENT)
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        log.warning("ignoring $%s: not JSON", DOCUMENT_VARIABLE)
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        log.warning("ignoring $%s: not a configuration document", DOCUMENT_VARIABLE)
        return None
    doc["pid"] = os.getpid()
    return doc


@asynccontextmanager
async def serve_image(
    settings: PluginSettings, config: ClientConfig, document: Mapping[str, Any] | None
) -> AsyncIterator[ImageGateway]:
    """Serve metrics (when asked), connect, open the image; on exit, undo all of it."""
    served: list[ImageGateway] = []

    def not_ready() -> str | None:
        if not served:
            return f"connecting to the cluster and opening image {settings.spec}"
        return None

    async with (
        serving_metrics(settings.metrics, "nbd", ready=not_ready, config=document) as endpoint,
        ImageGateway.serve(settings, config) as gateway,
    ):
        if endpoint is not None:
            endpoint.add(client_collector(gateway.client))
            endpoint.add(nbd_collector(gateway))
        served.append(gateway)
        try:
            yield gateway
        finally:
            served.clear()
