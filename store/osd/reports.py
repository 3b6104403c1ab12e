"""What a storage daemon tells the master: its heartbeat report (the PGs it leads and their
states, usage, fullness, cumulative counters the master makes rates of), and its answers
to what the master asks on an operator's behalf (`store pg query|scrub|deep-scrub|repair`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from store.errors import Code, RemoteError
from store.metrics.osd import PEER_TRAFFIC
from store.placement import placement

if TYPE_CHECKING:
    from store.osd.daemon import OsdDaemon
    from store.osd.pg import PlacementGroup


def answer_master(daemon: OsdDaemon, op: str, args: dict[str, Any]) -> Any:
    """What the master asks of us on an operator's behalf."""
    if op != "pg_admin":
        raise RemoteError(Code.EINVAL, f"unknown operation {op!r}")
    try:
        key = (int(args["pool"]), int(args["pg"]))
        action = str(args["action"])
    except (KeyError, TypeError, ValueError):
        raise RemoteError(Code.EINVAL, "malformed pg_admin") from None
    pgobj = daemon.pgs.get(key)
    if pgobj is None or pgobj.state not in ("active", "peering"):
        raise RemoteError(
            Code.ESTALE, f"osd.{daemon.osd_id} is not the primary of pg {key[0]}.{key[1]:x}"
        )
    if action == "query":
        return {**pg_query(daemon, pgobj), "scrub": pgobj.scrubber.scrub_info()}
    if action in ("scrub", "deep-scrub", "repair"):
        return pgobj.scrubber.scrub(deep=action != "scrub", repair=action == "repair")
    raise RemoteError(Code.EINVAL, f"unknown pg action {action!r}")


def pg_query(daemon: OsdDaemon, pgobj: PlacementGroup) -> dict[str, Any]:
    """Everything the primary knows of one PG (`store pg query`)."""
    info = daemon.store.pg_info(pgobj.pool_id, pgobj.pg)
    log_entries = daemon.store.pg_log_last(pgobj.pool_id, pgobj.pg, 1)
    objects = daemon.store.pg_object_count(pgobj.pool_id, pgobj.pg)
    degraded, misplaced = pgobj.copy_shortfall(objects)
    return {
        "pgid": pgobj.name,
        "state": pgobj.status(),
        "epoch": daemon.map.epoch,
        "interval_epoch": pgobj.interval_epoch,
        "placement": list(placement(daemon.map, pgobj.pool_id, pgobj.pg)),
        "acting": list(pgobj.acting),
        "primary": daemon.osd_id,
        "active_replicas": sorted(pgobj.active),
        "recovering": sorted(pgobj.recovery.recovering),
        "backfilling": sorted(pgobj.recovery.backfilling),
        "backfill_waiting": sorted(pgobj.recovery.backfill_waiting),
        "interim": sorted(pgobj.interim),  # former members kept until the move is done
        "last_version": list(info.last_version),
        "last_forwarded": list(pgobj.last_forwarded),
        "log_tail": info.log_tail,
        "log_head": list(log_entries[-1].version) if log_entries else None,
        "objects": objects,
        "copies": {"degraded": degraded, "misplaced": misplaced},
    }


def heartbeat_report(daemon: OsdDaemon) -> dict[str, Any]:
    """What the master shows in `store status` and the dashboard: states of the PGs we
    lead, usage, fullness, counters (cumulative; the master makes rates of them)."""
    # [pool, pg, state, version, objects, degraded copies, misplaced copies] of the PGs
    # we lead (see store/osd/pgstats.py).
    pg_list: list[list[Any]] = []
    recovering = 0
    led: list[tuple[PlacementGroup, str]] = []
    for pgobj in daemon.pgs.values():
        recovering += len(pgobj.recovery.recovering)
        state = pgobj.status()
        if state is not None:
            led.append((pgobj, state))
    # A scrub leaves the counts alone; a member short of objects is what makes them move.
    counts = daemon.pg_objects(busy=any(not s.startswith("active+clean") for _, s in led))
    for pgobj, state in led:
        objects = counts.get((pgobj.pool_id, pgobj.pg), 0)
        degraded, misplaced = pgobj.copy_shortfall(objects)
        pg_list.append(
            [
                pgobj.pool_id,
                pgobj.pg,
                state,
                list(pgobj.last_forwarded),
                objects,
                degraded,
                misplaced,
            ]
        )
    disk = daemon.disk
    stats = daemon.front.stats
    ops = {"read": 0, "write": 0}
    for (kind, _code), n in stats.ops.items():
        if kind in ops:
            ops[kind] += n
    traffic = PEER_TRAFFIC
    return {
        "pg_list": pg_list,
        "usage": {
            **daemon.usage,
            "disk_total": disk.total if disk else 0,
            "disk_avail": disk.avail if disk else 0,
        },
        "full": daemon.full,
        "nearfull": daemon.nearfull,
        "full_ratio": daemon.config.full_ratio,
        "nearfull_ratio": daemon.config.nearfull_ratio,
        "dropped": dict(daemon.front.dropped),
        "checksum_errors": daemon.store.checksum_errors,
        "time": time.time(),
        "service_key_gen": _service_key_gen(daemon),
        "sessions": len(daemon.front.sessions.sessions) if daemon.front.sessions else 0,
        "ops": ops,
        "data_bytes": dict(stats.data_bytes),
        "recovery": {
            "objects": traffic.ops["recovery_pushed"] + traffic.ops["recovery_pulled"],
            "bytes": traffic.bytes["recovery_pushed"] + traffic.bytes["recovery_pulled"],
            "members": recovering,
        },
    }


def _service_key_gen(daemon: OsdDaemon) -> int:
    generations = daemon.service_keys.generations()
    return generations[-1].gen if generations else 0
