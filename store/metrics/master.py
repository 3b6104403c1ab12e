"""What the master exposes: the cluster as it sees it (health, daemons, PGs, usage) and
its own work (requests, authentications, heartbeats, connections)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from store import health
from store.metrics.families import ScrapeCollector, counter, counter_by, gauge, gauge_by

if TYPE_CHECKING:
    from store.master.server import MasterServer


def master_families(server: MasterServer) -> Iterator[Metric]:
    view = server.cluster_view()
    m = view.map
    checks = health.evaluate(view)
    yield gauge("store_master_map_epoch", "Epoch of the current map.", m.epoch)
    yield gauge(
        "store_cluster_health_status",
        "Cluster health: 0 OK, 1 WARN, 2 ERR.",
        health.severity_value(health.overall(checks)),
    )
    yield gauge(
        "store_cluster_health_check",
        "1 for each failing health check (see `store health detail`).",
        labels=["code", "severity"],
        samples=[((c.code, c.severity), 1) for c in checks],
    )
    osds = m.osds.values()
    yield gauge_by(
        "store_cluster_osds",
        "Daemons by status (a daemon is counted as up or down, and as in or out).",
        "status",
        {
            "up": sum(o.up for o in osds),
            "down": sum(not o.up for o in osds),
            "in": sum(o.in_ for o in osds),
            "out": sum(not o.in_ for o in osds),
        },
    )
    yield gauge(
        "store_cluster_osd_up",
        "1 when the daemon is up, by daemon.",
        labels=["osd", "host"],
        samples=[((str(o.id), o.host), int(o.up)) for o in sorted(osds, key=lambda o: o.id)],
    )
    disk_samples = []
    for o in sorted(osds, key=lambda o: o.id):
        disk = view.disk(o.id)
        if disk is not None:
            disk_samples.append(((str(o.id),), 1 - disk[1] / disk[0]))
    yield gauge(
        "store_cluster_osd_disk_used_ratio",
        "Fraction of each up daemon's disk in use, from its last report.",
        labels=["osd"],
        samples=disk_samples,
    )
    yield gauge_by("store_cluster_pgs", "PGs by state, cluster-wide.", "state", view.pg_states)
    yield gauge("store_cluster_pools", "Pools.", len(m.pools))
    usage = view.usage()
    yield gauge(
        "store_cluster_objects",
        "Object copies stored on up daemons (refreshed every 30 s).",
        usage["objects"],
    )
    yield gauge(
        "store_cluster_stored_bytes",
        "Logical bytes stored on up daemons, all copies (refreshed every 30 s).",
        usage["bytes"],
    )
    yield counter_by(
        "store_master_requests", "Requests served, by operation.", "op", server.requests
    )
    yield counter(
        "store_master_authentications",
        "Authentications, by kind (client key, dashboard login) and result.",
        labels=["kind", "result"],
        samples=sorted(server.authentications.items()),
    )
    yield counter("store_master_heartbeats", "Heartbeats received from daemons.", server.heartbeats)
    yield gauge_by(
        "store_master_connections", "Open connections, by role.", "role", server.connections
    )
    yield gauge(
        "store_master_subscribers", "Connections receiving map updates.", len(server.subscribers)
    )
    yield gauge(
        "store_master_service_key_generation",
        "Generation of the key that seals new tickets.",
        server.state.service_keys().current().gen,
    )


def master_collector(server: MasterServer) -> ScrapeCollector:
    return ScrapeCollector(lambda: master_families(server), "master")
