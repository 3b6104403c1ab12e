"""Health checks from a master's status answer: which fire, how badly, and what they say."""

from __future__ import annotations

from typing import Any

from store import health
from store.health import ClusterView, evaluate, overall, render_detail, render_summary
from store.placement import ClusterMap, OsdInfo, PoolSpec, acting_set
from store.status import render, summarize

GiB = 1024**3


def cluster_map(up: tuple[bool, ...] = (True, True, True), out: tuple[int, ...] = ()) -> ClusterMap:
    osds = {
        i: OsdInfo(
            id=i,
            uuid=f"u{i}",
            host=f"host{i}",
            addr=f"10.0.0.{i}:6800",
            peer_addr=f"10.0.0.{i}:6800",
            cert_name="osd",
            weight=1.0,
            up=is_up,
            in_=i not in out,
        )
        for i, is_up in enumerate(up)
    }
    pools = {1: PoolSpec(id=1, name="default", size=3, min_size=2, pg_num=8, seed=7)}
    return ClusterMap(epoch=9, fsid="f", created=0.0, osds=osds, pools=pools)


def report(pgs: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "pg_list": pg_list(pgs or {}),
        "usage": {"objects": 10, "bytes": 1000, "disk_total": 100 * GiB, "disk_avail": 60 * GiB},
        "full": False,
        "nearfull": False,
        "full_ratio": 0.95,
        "nearfull_ratio": 0.85,
        "checksum_errors": 0,
        "clock_skew": 0.01,
        "service_key_gen": 3,
    }
    r.update(extra)
    return r


def pg_list(counts: dict[str, int]) -> list[list[Any]]:
    """A daemon's report of the PGs it leads, `counts[state]` of them in each state."""
    states = [state for state, n in counts.items() for _ in range(n)]
    return [[1, pg, state, [9, 1]] for pg, state in enumerate(states)]


def status(m: ClusterMap, reports: dict[int, dict[str, Any]], key_gen: int = 3) -> dict[str, Any]:
    return {
        "map": m.to_wire(),
        "reports": {str(k): v for k, v in reports.items()},
        "master": {"time": 1.0, "service_key_gen": key_gen},
    }


def healthy_reports() -> dict[int, dict[str, Any]]:
    return {
        0: report({"active+clean": 3}),
        1: report({"active+clean": 3}),
        2: report({"active+clean": 2}),
    }


def codes(result: dict[str, Any]) -> dict[str, str]:
    return {c.code: c.severity for c in evaluate(ClusterView.from_status(result))}


def test_a_healthy_cluster_has_no_checks() -> None:
    result = status(cluster_map(), healthy_reports())
    assert evaluate(ClusterView.from_status(result)) == []
    s = summarize(result)
    assert s["health"] == "HEALTH_OK" and s["warnings"] == []
    assert s["pgs"] == {"total": 8, "states": {"active+clean": 8}}
    assert s["usage"] == {"objects": 30, "bytes": 3000}
    assert "health: HEALTH_OK" in render(s)
    assert render_summary([]) == "HEALTH_OK"


def test_a_daemon_down_degrades_pgs() -> None:
    reports = {0: report({"active+degraded": 4}), 1: report({"active+degraded": 4})}
    result = status(cluster_map(up=(True, True, False)), reports)
    found = codes(result)
    assert found == {"OSD_DOWN": "HEALTH_WARN", "PG_DEGRADED": "HEALTH_WARN"}
    checks = evaluate(ClusterView.from_status(result))
    down = next(c for c in checks if c.code == "OSD_DOWN")
    assert down.summary == "1 daemon down: osd.2"
    assert down.detail == ("osd.2 on host host2 (10.0.0.2:6800) is down",)
    assert "store osd out" in down.advice
    text = render(summarize(result))
    assert "OSD_DOWN: 1 daemon down: osd.2" in text
    assert "what to do: Start it again" in text
    detail = render_detail(checks)
    assert detail.startswith("HEALTH_WARN\n[WARN] OSD_DOWN")
    assert "    what to do:" in detail


def test_every_daemon_down_is_an_error_and_pgs_are_down() -> None:
    result = status(cluster_map(up=(False, False, False)), {})
    found = codes(result)
    assert found["OSD_DOWN"] == "HEALTH_ERR"
    assert found["PG_AVAILABILITY"] == "HEALTH_ERR"
    view = ClusterView.from_status(result)
    assert view.pg_states == {"down": 8}
    assert overall(evaluate(view)) == "HEALTH_ERR"


def test_missing_reports_are_unknown_pgs() -> None:
    result = status(cluster_map(), {0: report({"active+clean": 3})})
    assert codes(result) == {"PG_AVAILABILITY": "HEALTH_WARN"}
    assert ClusterView.from_status(result).pg_states["unknown"] == 5


def test_out_daemons_warn() -> None:
    result = status(cluster_map(up=(True, True, False), out=(2,)), healthy_reports())
    found = codes(result)
    assert "OSD_OUT" in found and "OSD_DOWN" not in found  # down and out: only out


def test_full_and_nearfull() -> None:
    reports = healthy_reports()
    reports[0].update(full=True)
    reports[0]["usage"]["disk_avail"] = 4 * GiB
    reports[1]["usage"]["disk_avail"] = 10 * GiB  # 90% used: above nearfull_ratio
    found = codes(status(cluster_map(), reports))
    assert found == {"OSD_FULL": "HEALTH_ERR", "OSD_NEARFULL": "HEALTH_WARN"}
    checks = evaluate(ClusterView.from_status(status(cluster_map(), reports)))
    full = next(c for c in checks if c.code == "OSD_FULL")
    assert full.detail == ("osd.0 is 96% full (full_ratio 95%): writes refused",)
    assert checks[0].code == "OSD_FULL"  # errors first


def test_clock_skew_checksums_and_stale_keys() -> None:
    reports = healthy_reports()
    reports[1]["clock_skew"] = -2.5
    reports[2]["checksum_errors"] = 12
    reports[1]["checksum_errors"] = 3  # a few, each repaired: no warning
    reports[0]["service_key_gen"] = 2
    checks = evaluate(ClusterView.from_status(status(cluster_map(), reports)))
    by_code = {c.code: c for c in checks}
    assert set(by_code) == {"CLOCK_SKEW", "OSD_CHECKSUM_ERRORS", "AUTH_KEYS_STALE"}
    assert by_code["CLOCK_SKEW"].detail == ("osd.1's clock is 2.5 s behind the master's",)
    assert "NTP" in by_code["CLOCK_SKEW"].advice
    assert by_code["OSD_CHECKSUM_ERRORS"].severity == health.WARN
    assert by_code["OSD_CHECKSUM_ERRORS"].detail == (
        "osd.2: 12 blocks failed their checksum since it started",
    )
    assert "generation 2" in by_code["AUTH_KEYS_STALE"].detail[0]


def test_hostile_report_values_do_not_break_health() -> None:
    reports: dict[int, dict[str, Any]] = {
        0: {
            "pg_list": [["1", 0, "active+clean"], [1, 1, 3], [1], "x"],
            "usage": "nonsense",
            "clock_skew": "far",
        },
        1: {"pg_list": {"active+clean": 1}, "usage": {"disk_total": True, "disk_avail": None}},
        2: report({"active+clean": 2}),
    }
    view = ClusterView.from_status(status(cluster_map(), reports))
    checks = evaluate(view)
    assert {c.code for c in checks} == {"PG_AVAILABILITY"}
    assert view.usage() == {"objects": 10, "bytes": 1000}
    assert [c.to_wire()["code"] for c in checks] == ["PG_AVAILABILITY"]


def test_flags_warn_and_inconsistent_pgs_are_errors() -> None:
    m = cluster_map()
    flagged = ClusterMap(
        epoch=m.epoch,
        fsid=m.fsid,
        created=0.0,
        osds=m.osds,
        pools=m.pools,
        flags=frozenset({"noout"}),
    )
    found = codes(status(flagged, healthy_reports()))
    assert found == {"OSDMAP_FLAGS": "HEALTH_WARN"}
    reports = healthy_reports()
    reports[0] = report({"active+clean+inconsistent": 1, "active+clean": 2})
    result = status(m, reports)
    assert codes(result) == {"PG_DAMAGED": "HEALTH_ERR"}
    damaged = next(c for c in evaluate(ClusterView.from_status(result)) if c.code == "PG_DAMAGED")
    assert damaged.summary == "1 pg inconsistent: a scrub found copies that differ"
    assert "store pg repair" in damaged.advice


def test_status_shows_client_io_and_recovery_rates() -> None:
    reports = healthy_reports()
    reports[0]["recovery"] = {"objects": 5, "bytes": 100, "members": 2}
    result = status(cluster_map(), reports)
    result["rates"] = {
        "read_bytes": 2 * 1024 * 1024,
        "write_bytes": 1024,
        "read_ops": 12.0,
        "write_ops": 3.0,
        "recovery_objects": 4.0,
        "recovery_bytes": 4096,
    }
    text = render(summarize(result))
    assert "io:     client 2.0 MiB/s rd, 1.0 KiB/s wr, 12 op/s rd, 3 op/s wr" in text
    assert "recovery: 2 copies being brought up to date, 4.0 KiB/s, 4 objects/s" in text
    quiet = render(summarize(status(cluster_map(), healthy_reports())))
    assert "io:" not in quiet and "recovery:" not in quiet


def test_object_counts_come_from_each_pg_s_primary() -> None:
    m = cluster_map()
    primaries = {pg: acting_set(m, 1, pg)[0] for pg in range(8)}
    reports: dict[int, dict[str, Any]] = {i: report() for i in range(3)}
    for pg, osd in primaries.items():
        state = "active+remapped+backfilling" if pg < 2 else "active+clean"
        counts = [10, 4, 6] if pg < 2 else [10, 0, 0]
        reports[osd]["pg_list"].append([1, pg, state, [9, 1], *counts])
        # A daemon that is not the PG's primary (any more) is not counted.
        other = (osd + 1) % 3
        reports[other]["pg_list"].append([1, pg, "active+degraded", [9, 1], 99, 99, 99])
    # Malformed counts are read as none.
    reports[0]["pg_list"].append([1, 0, "active+clean", [9, 1], -3, "x", None])
    view = ClusterView.from_status(status(m, reports))
    assert (view.objects, view.object_copies, view.degraded, view.misplaced) == (80, 240, 8, 12)
    s = summarize(status(m, reports))
    assert s["objects"] == {"total": 80, "copies_wanted": 240, "degraded": 8, "misplaced": 12}
    text = render(s)
    assert "data:   80 objects, 30 copies stored" in text
    assert "8/240 object copies degraded (3.333%)" in text
    assert "12/240 object copies misplaced (5.000%)" in text
    degraded = next(c for c in evaluate(view) if c.code == "PG_DEGRADED")
    assert "8/240 object copies degraded" in degraded.summary


def test_no_object_counts_line_when_nothing_is_short() -> None:
    text = render(summarize(status(cluster_map(), healthy_reports())))
    assert "degraded" not in text and "misplaced" not in text
