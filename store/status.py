"""`store status` (the cluster on one screen, like `ceph -s`) and `store health`."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from store.client.cli import client_options, emit, with_master
from store.client.config import ClientConfig
from store.health import (
    OK,
    WARN,
    ClusterView,
    HealthCheck,
    evaluate,
    overall,
    render_detail,
    render_summary,
)


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    view = ClusterView.from_status(result)
    m = view.map
    checks = evaluate(view)
    return {
        "health": overall(checks),
        "warnings": [c.summary for c in checks],
        "checks": [c.to_wire() for c in checks],
        "fsid": m.fsid,
        "epoch": m.epoch,
        "osds": {
            "total": len(m.osds),
            "up": sum(o.up for o in m.osds.values()),
            "in": sum(o.in_ for o in m.osds.values()),
        },
        "pools": len(m.pools),
        "pgs": {"total": view.total_pgs, "states": dict(sorted(view.pg_states.items()))},
        "usage": view.usage(),
        "objects": {
            "total": view.objects,
            "copies_wanted": view.object_copies,
            "degraded": view.degraded,
            "misplaced": view.misplaced,
        },
        "io": _rates(result.get("rates")),
        "recovery": {
            "members": sum(
                int(r.get("recovery", {}).get("members", 0))
                for r in view.reports.values()
                if isinstance(r.get("recovery"), dict)
            ),
        },
    }


def _rates(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict):
        return {}
    return {
        str(k): float(v)
        for k, v in raw.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def render(s: dict[str, Any]) -> str:
    problems: list[str] = []
    for check in s["checks"]:
        problems.append(f"          {check['code']}: {check['summary']}")
        problems.extend(
            textwrap.wrap(
                f"what to do: {check['advice']}",
                width=96,
                initial_indent="            ",
                subsequent_indent="              ",
            )
        )
    objects = s["objects"]
    lines = [
        f"cluster {s['fsid']}",
        f"  health: {s['health']}",
        *problems,
        f"  map:    epoch {s['epoch']}",
        f"  osds:   {s['osds']['total']} daemons: {s['osds']['up']} up, {s['osds']['in']} in",
        f"  pools:  {s['pools']} pools, {s['pgs']['total']} pgs",
        f"  data:   {objects['total']} objects, {s['usage']['objects']} copies stored, "
        f"{_size(s['usage']['bytes'])} used",
    ]
    for kind in ("degraded", "misplaced"):
        if objects[kind]:
            share = objects[kind] / max(1, objects["copies_wanted"])
            lines.append(
                f"          {objects[kind]}/{objects['copies_wanted']} object copies "
                f"{kind} ({share:.3%})"
            )
    lines.append(
        "  pgs:    "
        + ("\n          ".join(f"{n} {st}" for st, n in s["pgs"]["states"].items()) or "none")
    )
    io = s.get("io") or {}
    if io:
        lines.append(
            f"  io:     client {_size(io.get('read_bytes', 0))}/s rd, "
            f"{_size(io.get('write_bytes', 0))}/s wr, "
            f"{io.get('read_ops', 0):.0f} op/s rd, {io.get('write_ops', 0):.0f} op/s wr"
        )
    members = (s.get("recovery") or {}).get("members", 0)
    if members or io.get("recovery_objects"):
        lines.append(
            f"  recovery: {members} copies being brought up to date, "
            f"{_size(io.get('recovery_bytes', 0))}/s, {io.get('recovery_objects', 0):.0f} objects/s"
        )
    if s["checks"]:
        lines.append("  (`store health detail` lists what each problem affects)")
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
    if summary["health"] != OK:
        raise SystemExit(1)


def _exit_code(checks: list[HealthCheck]) -> int:
    health = overall(checks)
    return 0 if health == OK else 1 if health == WARN else 2


@click.command("health")
@click.argument("what", required=False, type=click.Choice(["detail"]))
@click.option("--json", "as_json", is_flag=True)
@client_options
def health_command(config: ClientConfig, what: str | None, as_json: bool) -> None:
    """Cluster health; `store health detail` lists each problem, what it affects and what
    to do. Exit code 0 when healthy, 1 on warnings, 2 on errors."""
    checks = evaluate(ClusterView.from_status(with_master(config, "status")))
    if as_json:
        doc = {"health": overall(checks), "checks": [c.to_wire() for c in checks]}
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(render_detail(checks) if what == "detail" else render_summary(checks))
    code = _exit_code(checks)
    if code:
        raise SystemExit(code)
