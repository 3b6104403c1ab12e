"""Cluster health: what is wrong, how badly, and what to do about it.

The master's ``status`` answer (the map, each up daemon's latest heartbeat report and the
master's own figures) is turned into a :class:`ClusterView`, and :func:`evaluate` derives
the health checks from it — pure functions, used alike by ``store status``,
``store health detail``, the master's dashboard and its metrics. Each check has a code
(as Ceph's ``OSD_DOWN``, ``PG_DEGRADED``), a severity, a one-line summary, one line per
affected thing, and advice an operator can act on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from store.placement import ClusterMap, acting_set, primary

OK, WARN, ERR = "HEALTH_OK", "HEALTH_WARN", "HEALTH_ERR"
_RANK = {OK: 0, WARN: 1, ERR: 2}

CLOCK_SKEW_WARN = 1.0  # seconds between a daemon's clock and the master's
CHECKSUM_WARN = 10  # damaged blocks met by one daemon (since it started) that make a warning
DEFAULT_NEARFULL_RATIO = 0.85
DEFAULT_FULL_RATIO = 0.95
INACTIVE_STATES = ("down", "peering", "unknown")


@dataclass(frozen=True)
class HealthCheck:
    code: str
    severity: str
    summary: str
    detail: tuple[str, ...]
    advice: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "summary": self.summary,
            "detail": list(self.detail),
            "advice": self.advice,
        }


@dataclass
class ClusterView:
    """The master's ``status`` answer, decoded once."""

    map: ClusterMap
    reports: dict[int, dict[str, Any]]  # up daemons' latest heartbeat reports
    master: dict[str, Any] = field(default_factory=dict)
    pg_states: Counter[str] = field(default_factory=Counter)
    pool_states: dict[int, Counter[str]] = field(default_factory=dict)  # pools of the map
    total_pgs: int = 0
    # Object counts of the PGs whose reporter is their primary in this map.
    objects: int = 0
    object_copies: int = 0  # objects times their pool's size
    degraded: int = 0
    misplaced: int = 0

    @classmethod
    def from_status(cls, result: dict[str, Any]) -> ClusterView:
        reports = {int(k): _dict(v) for k, v in result.get("reports", {}).items()}
        master = _dict(result.get("master"))
        return cls.build(ClusterMap.from_wire(result["map"]), reports, master)

    @classmethod
    def build(
        cls, m: ClusterMap, reports: dict[int, dict[str, Any]], master: dict[str, Any]
    ) -> ClusterView:
        """From a map object (whose placement is computed once and cached on it)."""
        view = cls(map=m, reports=reports, master=dict(master))
        states: Counter[str] = Counter()
        view.pool_states = {p: Counter() for p in m.pools}
        for osd_id, report in reports.items():
            for row in reported_pgs(report):
                states[row.state] += 1
                if row.pool in view.pool_states:
                    view.pool_states[row.pool][row.state] += 1
                spec = m.pools.get(row.pool)
                if spec is not None and primary(m, row.pool, row.pg) == osd_id:
                    view.objects += row.objects
                    view.object_copies += row.objects * spec.size
                    view.degraded += row.degraded
                    view.misplaced += row.misplaced
        view.total_pgs = sum(p.pg_num for p in m.pools.values())
        down = sum(
            1 for p in m.pools.values() for pg in range(p.pg_num) if not acting_set(m, p.id, pg)
        )
        if down:
            states["down"] += down
        unknown = view.total_pgs - sum(states.values())
        if unknown > 0:
            states["unknown"] += unknown
        view.pg_states = states
        return view

    def usage(self) -> dict[str, int]:
        used = sum(_num(_dict(r.get("usage")).get("bytes")) for r in self.reports.values())
        objects = sum(_num(_dict(r.get("usage")).get("objects")) for r in self.reports.values())
        return {"objects": int(objects), "bytes": int(used)}

    def disk(self, osd_id: int) -> tuple[float, float] | None:
        """(total, available) bytes of a daemon's disk, from its report."""
        usage = _dict(self.reports.get(osd_id, {}).get("usage"))
        total, avail = _num(usage.get("disk_total")), _num(usage.get("disk_avail"))
        return (total, min(total, max(0.0, avail))) if total > 0 else None


def _num(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _dict(value: object) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


class ReportedPg(NamedTuple):
    pool: int
    pg: int
    state: str
    version: list[int] | None
    objects: int  # 0 where the report does not say
    degraded: int  # object copies missing
    misplaced: int  # object copies kept away from where placement wants them


def reported_pgs(report: dict[str, Any]) -> Iterator[ReportedPg]:
    """The PGs a daemon's report says it leads; malformed entries are skipped."""
    rows = report.get("pg_list")
    if not isinstance(rows, list):
        return
    for row in rows:
        if (
            isinstance(row, list)
            and len(row) >= 3
            and type(row[0]) is int
            and type(row[1]) is int
            and isinstance(row[2], str)
        ):
            version = row[3] if len(row) > 3 and isinstance(row[3], list) else None
            counts = [_count(row[i]) if len(row) > i else 0 for i in (4, 5, 6)]
            yield ReportedPg(row[0], row[1], row[2], version, *counts)


def _count(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0


def _osds(ids: list[int]) -> str:
    return ", ".join(f"osd.{i}" for i in ids)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# --- the checks --------------------------------------------------------------------------


def _osd_down(v: ClusterView) -> Iterator[HealthCheck]:
    down = sorted(o.id for o in v.map.osds.values() if not o.up and o.in_)
    if not down:
        return
    all_down = len(down) == sum(1 for o in v.map.osds.values() if o.in_)
    yield HealthCheck(
        "OSD_DOWN",
        ERR if all_down else WARN,
        f"{_plural(len(down), 'daemon')} down: {_osds(down)}",
        tuple(f"osd.{i} on host {v.map.osds[i].host} ({v.map.osds[i].addr}) is down" for i in down),
        "Start it again (`systemctl start store-osd@DISK` on its host; its log says why it "
        "stopped). Its PGs run degraded meanwhile. If its disk is lost, run "
        "`store osd out ID` so that its data is copied to other daemons.",
    )


def _osd_out(v: ClusterView) -> Iterator[HealthCheck]:
    out = sorted(o.id for o in v.map.osds.values() if not o.in_)
    if out:
        yield HealthCheck(
            "OSD_OUT",
            WARN,
            f"{_plural(len(out), 'daemon')} out: {_osds(out)}",
            tuple(f"osd.{i} is out{' and down' if not v.map.osds[i].up else ''}" for i in out),
            "An out daemon holds no data. Once it is sound again, `store osd in ID`; a daemon "
            "being retired stays out until its disk is wiped.",
        )


def _pgs(v: ClusterView) -> Iterator[HealthCheck]:
    inactive = {s: n for s, n in v.pg_states.items() if s in INACTIVE_STATES and n}
    if inactive:
        n = sum(inactive.values())
        yield HealthCheck(
            "PG_AVAILABILITY",
            ERR if "down" in inactive else WARN,
            f"{_plural(n, 'pg')} inactive ("
            + ", ".join(f"{c} {s}" for s, c in sorted(inactive.items()))
            + ")",
            tuple(f"{c} pgs {s}" for s, c in sorted(inactive.items())),
            "Clients wait on these PGs. `down`: no daemon of the PG is up; start its daemons. "
            "`peering` and `unknown` settle within seconds after a change; if they stay, "
            "read the logs of the daemons involved.",
        )
    degraded = sum(n for s, n in v.pg_states.items() if "degraded" in s.split("+"))
    recovering = sum(
        n
        for s, n in v.pg_states.items()
        if {"recovering", "backfilling", "backfill_wait"} & set(s.split("+"))
    )
    affected = sum(
        n
        for s, n in v.pg_states.items()
        if {"degraded", "recovering", "backfilling", "backfill_wait"} & set(s.split("+"))
    )
    if affected:
        parts = [f"{degraded} degraded"] if degraded else []
        if recovering:
            parts.append(f"{recovering} recovering")
        if v.degraded:
            parts.append(f"{v.degraded}/{v.object_copies} object copies degraded")
        yield HealthCheck(
            "PG_DEGRADED",
            WARN,
            f"{_plural(affected, 'pg')} with too few up-to-date copies ({', '.join(parts)})",
            tuple(
                f"{n} pgs {s}"
                for s, n in sorted(v.pg_states.items())
                if {"degraded", "recovering", "backfilling", "backfill_wait"} & set(s.split("+"))
            ),
            "Recovery runs by itself: watch it finish with `store status`. Degraded PGs "
            "lack a copy because a daemon is down: bring it back, or mark it out "
            "(`store osd out ID`) so the copies are made elsewhere.",
        )


def _inconsistent(v: ClusterView) -> Iterator[HealthCheck]:
    bad = {s: n for s, n in v.pg_states.items() if "inconsistent" in s.split("+") and n}
    if bad:
        yield HealthCheck(
            "PG_DAMAGED",
            ERR,
            f"{_plural(sum(bad.values()), 'pg')} inconsistent: a scrub found copies that differ",
            tuple(f"{n} pgs {s}" for s, n in sorted(bad.items())),
            "`store pg ls --state inconsistent` names them; `store pg repair PGID` replaces "
            "each bad copy from a good one. If it recurs on one daemon, check its disk.",
        )


def _flags(v: ClusterView) -> Iterator[HealthCheck]:
    if v.map.flags:
        names = ", ".join(sorted(v.map.flags))
        yield HealthCheck(
            "OSDMAP_FLAGS",
            WARN,
            f"flags set: {names}",
            tuple(f"{f} is set" for f in sorted(v.map.flags)),
            "noout keeps down daemons in, so their data is not copied elsewhere: right for "
            "maintenance, wrong for a lost disk. `store osd unset noout` when done.",
        )


def _checksums(v: ClusterView) -> Iterator[HealthCheck]:
    """Damaged blocks a daemon met are repaired from good copies (read repair, scrub);
    damage left unrepaired shows as an inconsistent PG. What this warns of is a disk that
    keeps returning damaged blocks: CHECKSUM_WARN or more since its daemon started."""
    counts = {i: int(_num(r.get("checksum_errors"))) for i, r in v.reports.items()}
    bad = {i: n for i, n in counts.items() if n >= CHECKSUM_WARN}
    if bad:
        yield HealthCheck(
            "OSD_CHECKSUM_ERRORS",
            WARN,
            f"{_plural(len(bad), 'daemon')} keep reading damaged data: {_osds(sorted(bad))}",
            tuple(
                f"osd.{i}: {n} blocks failed their checksum since it started"
                for i, n in sorted(bad.items())
            ),
            "The disk returned bytes that do not match their checksum; each copy was "
            "replaced from a good one where one existed (clients never get wrong data). So "
            "many point at a failing disk: check it (`smartctl -a`, `dmesg`); if it is "
            "failing, `store osd out ID`, wait for HEALTH_OK, then replace it. The count "
            "starts again when the daemon restarts.",
        )


def _fullness(v: ClusterView) -> Iterator[HealthCheck]:
    full: list[str] = []
    near: list[str] = []
    full_ids: list[int] = []
    near_ids: list[int] = []
    for i, report in sorted(v.reports.items()):
        disk = v.disk(i)
        if disk is None:
            continue
        total, avail = disk
        used = 1 - avail / total
        full_ratio = _num(report.get("full_ratio")) or DEFAULT_FULL_RATIO
        near_ratio = _num(report.get("nearfull_ratio")) or DEFAULT_NEARFULL_RATIO
        line = f"osd.{i} is {used:.0%} full"
        if report.get("full") is True:
            full.append(f"{line} (full_ratio {full_ratio:.0%}): writes refused")
            full_ids.append(i)
        elif report.get("nearfull") is True or used >= near_ratio:
            near.append(f"{line} (nearfull_ratio {near_ratio:.0%}, full at {full_ratio:.0%})")
            near_ids.append(i)
    if full:
        yield HealthCheck(
            "OSD_FULL",
            ERR,
            f"{_plural(len(full), 'daemon')} full, writes refused: {_osds(full_ids)}",
            tuple(full),
            "Writes to PGs with a copy on a full daemon fail with ENOSPC; reads and deletes "
            "still work. Delete data, add daemons, or lower the full daemon's weight "
            "(`store osd reweight ID 0.8`) so that data moves off it.",
        )
    if near:
        yield HealthCheck(
            "OSD_NEARFULL",
            WARN,
            f"{_plural(len(near), 'daemon')} nearly full: {_osds(near_ids)}",
            tuple(near),
            "Add capacity (new daemons or disks) or delete data before these reach "
            "full_ratio, when writes stop.",
        )


def _clock_skew(v: ClusterView) -> Iterator[HealthCheck]:
    skewed = {
        i: _num(r.get("clock_skew"))
        for i, r in v.reports.items()
        if abs(_num(r.get("clock_skew"))) > CLOCK_SKEW_WARN
    }
    if skewed:
        yield HealthCheck(
            "CLOCK_SKEW",
            WARN,
            f"clock skew on {_osds(sorted(skewed))}",
            tuple(
                f"osd.{i}'s clock is {abs(s):.1f} s {'ahead of' if s > 0 else 'behind'} the master's"
                for i, s in sorted(skewed.items())
            ),
            "Run NTP on every machine (chrony or systemd-timesyncd). Past 300 s of skew, "
            "daemons refuse clients' tickets.",
        )


def _ticket_keys(v: ClusterView) -> Iterator[HealthCheck]:
    current = v.master.get("service_key_gen")
    if not isinstance(current, int):
        return
    stale = {
        i: int(_num(r.get("service_key_gen")))
        for i, r in v.reports.items()
        if isinstance(r.get("service_key_gen"), int) and r["service_key_gen"] < current
    }
    if stale:
        yield HealthCheck(
            "AUTH_KEYS_STALE",
            WARN,
            f"{_plural(len(stale), 'daemon')} cannot open new tickets: {_osds(sorted(stale))}",
            tuple(
                f"osd.{i} has service keys up to generation {g}; the master seals tickets "
                f"with generation {current}"
                for i, g in sorted(stale.items())
            ),
            "These daemons missed a key rotation, so clients with fresh tickets are refused "
            "there and the tickets they still accept are about to expire. Check the daemon's "
            "link to the master (its log, the network); restarting it fetches the keys.",
        )


CHECKS: tuple[Callable[[ClusterView], Iterator[HealthCheck]], ...] = (
    _osd_down,
    _osd_out,
    _flags,
    _pgs,
    _inconsistent,
    _checksums,
    _fullness,
    _clock_skew,
    _ticket_keys,
)


def evaluate(view: ClusterView) -> list[HealthCheck]:
    """Every health check that fails, most severe first."""
    checks = [check for fn in CHECKS for check in fn(view)]
    return sorted(checks, key=lambda c: -_RANK[c.severity])


def overall(checks: list[HealthCheck]) -> str:
    return max((c.severity for c in checks), key=_RANK.__getitem__, default=OK)


def severity_value(severity: str) -> int:
    """0, 1, 2 for OK, WARN, ERR (the value of the health metric)."""
    return _RANK[severity]


# --- text -------------------------------------------------------------------------------


def render_detail(checks: list[HealthCheck]) -> str:
    lines = [overall(checks)]
    for c in checks:
        lines.append(f"[{c.severity.removeprefix('HEALTH_')}] {c.code}: {c.summary}")
        lines.extend(f"    {d}" for d in c.detail)
        lines.append(f"    what to do: {c.advice}")
    return "\n".join(lines)


def render_summary(checks: list[HealthCheck]) -> str:
    return "\n".join([overall(checks), *(f"{c.code}: {c.summary}" for c in checks)])
