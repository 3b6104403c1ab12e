"""`store pg ls|query|scrub|deep-scrub|repair` and `store pool scrub`: placement groups as
their primaries see them. The master answers `ls` from the daemons' reports and passes the
other commands to the PG's primary."""

from __future__ import annotations

import json
from typing import Any

import click

from store.client.cli import client_options, emit, pool_group, with_master
from store.client.config import ClientConfig

SCRUB_TIMEOUT = 3600.0


@click.group("pg")
def pg_group() -> None:
    """Placement groups: states, details, scrubs and repairs."""


def _matches(state: str, wanted: tuple[str, ...]) -> bool:
    parts = set(state.split("+"))
    return all(w in parts or w == state for w in wanted)


@pg_group.command("ls")
@click.option("--pool", default=None, help="Only this pool's PGs.")
@click.option(
    "--state",
    "states",
    multiple=True,
    help="Only PGs in this state (a whole state like active+clean, or a part like degraded); "
    "repeat to require several.",
)
@click.option("--json", "as_json", is_flag=True)
@client_options
def pg_ls(config: ClientConfig, pool: str | None, states: tuple[str, ...], as_json: bool) -> None:
    """Every PG with its state, placement and acting set."""
    rows = with_master(config, "pg_ls")["pgs"]
    rows = [
        r
        for r in rows
        if (pool is None or r["pool"] == pool) and (not states or _matches(r["state"], states))
    ]
    emit(rows, as_json, _table)


def _table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'PG':<8} {'STATE':<34} {'OBJECTS':>8} {'DEGRADED':>8} {'MISPLACED':>9}  "
        f"{'PLACEMENT':<14} {'ACTING':<14} {'PRIMARY':<8} VERSION"
    )
    lines = [header]
    for r in rows:
        version = "-" if r["version"] is None else "{}'{}".format(*r["version"])
        primary = "-" if r["primary"] is None else f"osd.{r['primary']}"
        counts = [_count(r.get(k)) for k in ("objects", "degraded", "misplaced")]
        lines.append(
            f"{r['pgid']:<8} {r['state']:<34} {counts[0]:>8} {counts[1]:>8} {counts[2]:>9}  "
            f"{_osds(r['placement']):<14} {_osds(r['acting']):<14} {primary:<8} {version}"
        )
    return "\n".join(lines)


def _count(value: object) -> str:
    return "-" if value is None else str(value)


def _osds(ids: list[int]) -> str:
    return "[" + ",".join(str(i) for i in ids) + "]"


@pg_group.command("query")
@click.argument("pgid")
@client_options
def pg_query(config: ClientConfig, pgid: str) -> None:
    """Everything the PG's primary knows of it (JSON)."""
    click.echo(
        json.dumps(with_master(config, "pg_admin", {"pgid": pgid, "action": "query"}), indent=2)
    )


def _scrub(config: ClientConfig, pgid: str, action: str) -> dict[str, Any]:
    report: dict[str, Any] = with_master(
        config, "pg_admin", {"pgid": pgid, "action": action}, timeout=SCRUB_TIMEOUT
    )
    return report


def _scrub_text(report: dict[str, Any]) -> str:
    kind = "deep scrub" if report.get("deep") else "scrub"
    errors = report.get("errors") or []
    lines = [
        f"pg {report.get('pg')}: {kind} of {report.get('objects', 0)} objects: "
        f"{report.get('errors_total', len(errors))} errors, {report.get('repaired', 0)} "
        f"repaired, {report.get('unrepaired', 0)} left"
    ]
    lines += [f"  {e.get('object')!r} on osd.{e.get('osd')}: {e.get('problem')}" for e in errors]
    return "\n".join(lines)


def _scrub_command(action: str, doc: str) -> click.Command:
    @click.argument("pgid")
    @click.option("--json", "as_json", is_flag=True)
    @client_options
    def command(config: ClientConfig, pgid: str, as_json: bool) -> None:
        report = _scrub(config, pgid, action)
        emit(report, as_json, _scrub_text)
        if report.get("unrepaired", 0) > 0:
            raise SystemExit(1)

    command.__doc__ = doc
    return pg_group.command(action)(command)


_scrub_command(
    "scrub", "Compare the PG's copies: object lists, versions, sizes. Exit 1 if errors remain."
)
_scrub_command(
    "deep-scrub",
    "Compare the PG's copies byte for byte, re-reading and checking every block. Exit 1 if "
    "errors remain.",
)
_scrub_command("repair", "Deep-scrub the PG and replace every bad copy from a good one.")


@pool_group.command("scrub")
@click.argument("name")
@click.option("--deep", is_flag=True, help="Deep scrub: re-read and compare the data.")
@click.option("--json", "as_json", is_flag=True)
@client_options
def pool_scrub(config: ClientConfig, name: str, deep: bool, as_json: bool) -> None:
    """Scrub every PG of a pool, one after another. Exit 1 if errors remain."""
    pgids = [r["pgid"] for r in with_master(config, "pg_ls")["pgs"] if r["pool"] == name]
    if not pgids:
        raise click.ClickException(f"no pool named {name!r}")
    reports = [_scrub(config, pgid, "deep-scrub" if deep else "scrub") for pgid in pgids]
    emit(reports, as_json, lambda rs: "\n".join(_scrub_text(r) for r in rs))
    if any(r.get("unrepaired", 0) > 0 for r in reports):
        raise SystemExit(1)
