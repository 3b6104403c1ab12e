"""The document behind the dashboard page, built from the master's status (no I/O).

Client throughput and recovery progress are rates: the difference between a daemon's two
latest heartbeat reports (cumulative counters) over the time between them. A daemon that
restarted reports smaller counters; its rate counts as zero until the next report.
"""

from __future__ import annotations

from typing import Any

from store import health


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _counter(report: dict[str, Any], *path: str) -> float:
    node: Any = report
    for key in path:
        if not isinstance(node, dict):
            return 0.0
        node = node.get(key)
    return _num(node)


RATES = {
    "read_ops": ("ops", "read"),
    "write_ops": ("ops", "write"),
    "read_bytes": ("data_bytes", "read"),
    "write_bytes": ("data_bytes", "written"),
    "recovery_objects": ("recovery", "objects"),
    "recovery_bytes": ("recovery", "bytes"),
}


def rates(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, float]:
    """Per-second rates between two reports of one daemon."""
    out = dict.fromkeys(RATES, 0.0)
    if previous is None:
        return out
    elapsed = _num(current.get("received")) - _num(previous.get("received"))
    if elapsed <= 0:
        return out
    for name, path in RATES.items():
        delta = _counter(current, *path) - _counter(previous, *path)
        out[name] = max(0.0, delta / elapsed)
    return out


def build(
    view: health.ClusterView, previous: dict[int, dict[str, Any]], user: str
) -> dict[str, Any]:
    m = view.map
    checks = health.evaluate(view)
    daemons = []
    totals = dict.fromkeys(RATES, 0.0)
    for o in sorted(m.osds.values(), key=lambda o: o.id):
        report = view.reports.get(o.id) if o.up else None
        entry: dict[str, Any] = {
            "id": o.id,
            "host": o.host,
            "addr": o.addr,
            "up": o.up,
            "in": o.in_,
            "weight": o.weight,
            "full": bool(report and report.get("full") is True),
            "nearfull": bool(report and report.get("nearfull") is True),
        }
        disk = view.disk(o.id) if report else None
        if disk is not None:
            entry["disk_total"], entry["disk_used"] = disk[0], disk[0] - disk[1]
        if report:
            usage = _dict(report.get("usage"))
            entry["objects"] = int(_num(usage.get("objects")))
            entry["bytes"] = int(_num(usage.get("bytes")))
            entry["pgs_primary"] = sum(1 for _ in health.reported_pgs(report))
            entry["sessions"] = int(_num(report.get("sessions")))
            r = rates(report, previous.get(o.id))
            entry["rates"] = r
            for k, v in r.items():
                totals[k] += v
        daemons.append(entry)
    pools = [
        {
            "id": p.id,
            "name": p.name,
            "size": p.size,
            "min_size": p.min_size,
            "pg_num": p.pg_num,
            "encrypt": p.encrypt,
            "pg_states": dict(sorted(view.pool_states[p.id].items())),
        }
        for p in sorted(m.pools.values(), key=lambda p: p.name)
    ]
    recovering = sum(
        n
        for s, n in view.pg_states.items()
        if {"recovering", "backfilling", "backfill_wait"} & set(s.split("+"))
    )
    degraded = sum(n for s, n in view.pg_states.items() if "degraded" in s.split("+"))
    members = sum(_counter(r, "recovery", "members") for r in view.reports.values())
    return {
        "user": user,
        "time": view.master.get("time"),
        "fsid": m.fsid,
        "epoch": m.epoch,
        "health": health.overall(checks),
        "checks": [c.to_wire() for c in checks],
        "osds": {
            "total": len(m.osds),
            "up": sum(o.up for o in m.osds.values()),
            "in": sum(o.in_ for o in m.osds.values()),
        },
        "daemons": daemons,
        "pools": pools,
        "pgs": {"total": view.total_pgs, "states": dict(sorted(view.pg_states.items()))},
        "usage": view.usage(),
        "throughput": {
            k: totals[k] for k in ("read_ops", "write_ops", "read_bytes", "write_bytes")
        },
        "recovery": {
            "pgs_recovering": recovering,
            "pgs_degraded": degraded,
            "members_recovering": int(members),
            "objects_per_s": totals["recovery_objects"],
            "bytes_per_s": totals["recovery_bytes"],
        },
    }


def _dict(value: object) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}
