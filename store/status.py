"""`store status`: the cluster on one screen, like `ceph -s`."""

from __future__ import annotations

from collections import Counter
from typing import Any

import click

from store.client.cli import client_options, emit, with_master
from store.client.config import ClientConfig
from store.placement import ClusterMap, acting_set


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    m = ClusterMap.from_wire(result["map"])
    reports: dict[int, dict[str, Any]] = {int(k): v for k, v in result.get("reports", {}).items()}
    states: Counter[str] = Counter()
    for report in reports.values():
        states.update(report.get("pgs", {}))
    total_pgs = sum(p.pg_num for p in m.pools.values())
    down = sum(1 for p in m.pools.values() for pg in range(p.pg_num) if not acting_set(m, p.id, pg))
    if down:
        states["down"] += down
    unknown = total_pgs - sum(states.values())
    if unknown > 0:
        states["unknown"] += unknown
    used = sum(r.get("usage", {}).get("bytes", 0) for r in reports.values())
    objects = sum(r.get("usage", {}).get("objects", 0) for r in reports.values())
    warnings = []
    n_down = [o.id for o in m.osds.values() if not o.up]
    n_out = [o.id for o in m.osds.values() if not o.in_]
    if n_down:
        warnings.append(f"{len(n_down)} daemons down: {', '.join(f'osd.{i}' for i in n_down)}")
    if n_out:
        warnings.append(f"{len(n_out)} daemons out: {', '.join(f'osd.{i}' for i in n_out)}")
    unclean = total_pgs - states.get("active+clean", 0)
    if unclean:
        warnings.append(f"{unclean} of {total_pgs} pgs not active+clean")
    full = [i for i, r in reports.items() if r.get("full")]
    if full:
        warnings.append(f"daemons full, writes refused: {', '.join(f'osd.{i}' for i in full)}")
    bad = {i: r.get("checksum_errors", 0) for i, r in reports.items() if r.get("checksum_errors")}
    if bad:
        warnings.append("checksum errors on " + ", ".join(f"osd.{i} ({n})" for i, n in bad.items()))
    return {
        "health": "HEALTH_OK" if not warnings else "HEALTH_WARN",
        "warnings": warnings,
        "fsid": m.fsid,
        "epoch": m.epoch,
        "osds": {
            "total": len(m.osds),
            "up": sum(o.up for o in m.osds.values()),
            "in": sum(o.in_ for o in m.osds.values()),
        },
        "pools": len(m.pools),
        "pgs": {"total": total_pgs, "states": dict(sorted(states.items()))},
        "usage": {"objects": objects, "bytes": used},
    }


def render(s: dict[str, Any]) -> str:
    lines = [
        f"cluster {s['fsid']}",
        f"  health: {s['health']}",
        *[f"          {w}" for w in s["warnings"]],
        f"  map:    epoch {s['epoch']}",
        f"  osds:   {s['osds']['total']} daemons: {s['osds']['up']} up, {s['osds']['in']} in",
        f"  pools:  {s['pools']} pools, {s['pgs']['total']} pgs",
        f"  data:   {s['usage']['objects']} object copies, {_size(s['usage']['bytes'])} used",
        "  pgs:    "
        + ("\n          ".join(f"{n} {st}" for st, n in s["pgs"]["states"].items()) or "none"),
    ]
    return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@client_options
def status_command(config: ClientConfig, as_json: bool) -> None:
    """Cluster health, daemons, pools and PG states. Exit code 0 when healthy."""
    summary = summarize(with_master(config, "status"))
    emit(summary, as_json, render)
    if summary["health"] != "HEALTH_OK":
        raise SystemExit(1)
