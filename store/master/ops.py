"""What the master answers: one function per operation, and who may ask which.

Each operation takes (server, connection, arguments) and returns a msgpack-able result (or
an awaitable of one). ``store.master.server`` authenticates the connection and looks the
operation up in the table its role and capabilities allow: ``DAEMON_OPS`` for daemons,
``OPEN_OPS`` for anyone, ``CLIENT_OPS`` for authenticated clients, ``ADMIN_OPS`` for admin
keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from store import auth, health, logs
from store.errors import Code, RemoteError, StoreError
from store.placement import acting_set, placement, primary
from store.rpc import RpcConnection

if TYPE_CHECKING:
    from store.master.server import MasterServer

log = logging.getLogger("store.master")

Op = Callable[["MasterServer", RpcConnection, dict[str, Any]], Any]


def _arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    value = args.get(name, default)
    if value is ...:
        raise RemoteError(Code.EINVAL, f"missing argument {name!r}")
    if value is not None and not isinstance(value, kind):
        raise RemoteError(Code.EINVAL, f"argument {name!r} has the wrong type")
    return value


def op_osd_boot(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    cert_name = conn.context["cert_name"]
    osd_id = server.state.osd_boot(
        osd_uuid=_arg(args, "uuid", str),
        osd_id=_arg(args, "osd_id", int, None),
        host=_arg(args, "host", str),
        addr=_arg(args, "addr", str),
        peer_addr=_arg(args, "peer_addr", str),
        cert_name=cert_name,
    )
    server.daemons[osd_id] = conn
    server.subscribers.add(conn)
    server.failures.forget(osd_id)  # whatever was said of its previous life
    conn.name = f"osd.{osd_id}"
    conn.context["osd_id"] = osd_id
    server.last_heartbeat[osd_id] = trio.current_time()
    log.info(
        "osd.%d booted from %s (udp %s, peer %s)",
        osd_id,
        args["host"],
        args["addr"],
        args["peer_addr"],
    )
    server.publish()
    return {
        "osd_id": osd_id,
        "map": server.state.map.to_wire(),
        "service_keys": server.state.service_keys().to_wire(),
        "full": sorted(server.full_osds),
    }


def op_osd_heartbeat(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    osd_id = conn.context.get("osd_id")
    if osd_id is None:
        raise RemoteError(Code.EINVAL, "boot first")
    server.last_heartbeat[osd_id] = trio.current_time()
    server.heartbeats += 1
    now = time.time()
    report = dict(args)
    report["received"] = now
    sent = args.get("time")
    if isinstance(sent, int | float) and not isinstance(sent, bool):
        report["clock_skew"] = float(sent) - now  # network delay is noise here
    if osd_id in server.reports:
        server.previous_reports[osd_id] = server.reports[osd_id]
    server.reports[osd_id] = report
    info = server.state.map.osds.get(osd_id)
    if (
        info is not None
        and not info.up
        and not server.failures.reported(osd_id, trio.current_time(), server.up_osds())
    ):
        # It was marked down while it was merely slow: it is alive, so up again — unless
        # its peers still cannot reach it (up again now would flap with every heartbeat).
        log.info("osd.%d is back", osd_id)
        server._changed(server.state.osds_set_up([osd_id], True))
    if (report.get("full") is True) != (osd_id in server.full_osds):
        server._update_full()
    return {"epoch": server.state.map.epoch}


def op_osd_failure(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    """A daemon reports a peer silent (or, with alive=True, withdraws its report)."""
    reporter = conn.context.get("osd_id")
    if reporter is None:
        raise RemoteError(Code.EINVAL, "boot first")
    target = _arg(args, "target", int)
    if target not in server.state.map.osds or target == reporter:
        raise RemoteError(Code.EINVAL, f"cannot report osd.{target}")
    if _arg(args, "alive", bool, False):
        server.failures.withdraw(target, reporter)
        return {}
    ttl = float(_arg(args, "ttl", (int, float), 10.0))
    if not 0 < ttl <= 300:
        raise RemoteError(Code.EINVAL, "ttl must be in (0, 300] seconds")
    if server.state.map.osds[target].up:
        log.info(
            "osd.%d reports osd.%d silent for %.1fs",
            reporter,
            target,
            float(_arg(args, "silent_for", (int, float), 0.0)),
        )
    server.failures.report(target, reporter, trio.current_time(), ttl)
    server.check_failure_reports()
    return {}


def op_osd_stopping(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    osd_id = conn.context.get("osd_id")
    if osd_id is not None:
        log.info("osd.%d is stopping", osd_id)
        server.last_heartbeat.pop(osd_id, None)
        server._changed(server.state.osds_set_up([osd_id], False))
    return {}


def op_hello(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    return {"fsid": server.state.map.fsid, "epoch": server.state.map.epoch}


def op_auth_challenge(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    challenge = auth.new_challenge()
    conn.context["challenge"] = (name, challenge)
    return {"challenge": challenge}


def op_auth_prove(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    pending = conn.context.pop("challenge", None)
    name = _arg(args, "name", str)
    nonce = _arg(args, "client_nonce", bytes)
    proof = _arg(args, "proof", bytes)
    record = server.state.client(name)
    if pending is None or pending[0] != name:
        raise RemoteError(Code.EAUTH, "ask for a challenge first")
    if record is None or not auth.verify_proof(record.secret, name, pending[1], nonce, proof):
        server.authentications[("client", "refused")] += 1
        # One message for both: do not tell a stranger which client names exist.
        log.warning(
            "refused authentication of client %r: %s",
            name,
            "unknown client" if record is None else "wrong key",
        )
        raise RemoteError(
            Code.EAUTH, f"authentication of {name!r} failed: unknown client or wrong key"
        )
    server.authentications[("client", "ok")] += 1
    now = time.time()
    ticket = auth.issue_ticket(name, record.caps, now, server.config.ticket_ttl)
    conn.context["caps"] = record.caps
    conn.context["client"] = name
    conn.name = f"client.{name}"
    blob = auth.seal_ticket(server.state.service_keys(), ticket)
    sealed = auth.seal_for_client(
        record.secret,
        {
            "session_key": ticket.session_key,
            "expires": ticket.expires,
            "ticket_id": ticket.ticket_id,
        },
    )
    return {
        "ticket": blob,
        "sealed": sealed,
        "caps": record.caps.to_wire(),
        "expires": ticket.expires,
    }


def op_get_map(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    epoch = _arg(args, "epoch", int, None)
    if epoch is None or epoch == server.state.map.epoch:
        return {"map": server.state.map.to_wire()}
    old = server.state.map_at(epoch)
    if old is None:
        raise RemoteError(Code.ENOENT, f"no map with epoch {epoch}")
    return {"map": old.to_wire()}


def op_subscribe(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    server.subscribers.add(conn)
    return {"map": server.state.map.to_wire()}


def op_status(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    return server.status_result()


def op_pool_ls(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    return {"pools": [_pool_wire(p) for _, p in sorted(server.state.map.pools.items())]}


def _pool_wire(pool: Any) -> dict[str, Any]:
    return {
        "id": pool.id,
        "name": pool.name,
        "size": pool.size,
        "min_size": pool.min_size,
        "pg_num": pool.pg_num,
        "encrypt": pool.encrypt,
    }


def op_pool_create(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    pool = server.state.pool_create(
        _arg(args, "name", str),
        size=_arg(args, "size", int, 3),
        min_size=_arg(args, "min_size", int, None),
        pg_num=_arg(args, "pg_num", int, 64),
        encrypt=_arg(args, "encrypt", bool, True),
    )
    server.publish()
    return {"pool": _pool_wire(pool), "epoch": server.state.map.epoch}


def op_pool_set(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    pool = server.state.pool_set(_arg(args, "name", str), _arg(args, "key", str), args.get("value"))
    server.publish()
    return {"pool": _pool_wire(pool), "epoch": server.state.map.epoch}


def op_pool_rm(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    server.state.pool_rm(_arg(args, "name", str))
    server.publish()
    return {"epoch": server.state.map.epoch}


def op_osd_ls(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    m = server.state.map
    return {"epoch": m.epoch, "osds": m.to_wire()["osds"]}


def op_osd_set(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    osd_id = _arg(args, "osd_id", int)
    server._changed(
        server.state.osd_set(
            osd_id,
            in_=_arg(args, "in", bool, None),
            weight=_arg(args, "weight", (int, float), None),
        )
    )
    return {"epoch": server.state.map.epoch}


def op_osd_flag(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    flag = _arg(args, "flag", str)
    on = _arg(args, "on", bool)
    if server.state.set_flag(flag, on):
        log.warning("flag %s %s", flag, "set" if on else "unset")
        server._changed(True)
    return {"epoch": server.state.map.epoch, "flags": sorted(server.state.map.flags)}


def op_osd_rm(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    osd_id = _arg(args, "osd_id", int)
    force = _arg(args, "force", bool, False)
    m = server.state.map
    info = m.osds.get(osd_id)
    if info is None:
        raise RemoteError(Code.ENOENT, f"no osd.{osd_id}")
    if info.in_:
        raise RemoteError(
            Code.EAGAIN,
            f"osd.{osd_id} is in: mark it out (store osd out {osd_id}) and wait until every "
            "PG is active+clean before removing it",
        )
    if not force:
        view = server.cluster_view()
        unclean = {s: n for s, n in view.pg_states.items() if s != "active+clean" and n}
        if unclean:
            states = ", ".join(f"{n} {s}" for s, n in sorted(unclean.items()))
            raise RemoteError(
                Code.EAGAIN,
                f"osd.{osd_id} may still hold the only copy of some data: not every PG is "
                f"active+clean ({states}); wait for recovery, or --force to lose what only "
                "it holds",
            )
    server.state.osd_rm(osd_id)
    server.failures.forget(osd_id)
    server.reports.pop(osd_id, None)
    log.warning("osd.%d removed from the cluster%s", osd_id, " (forced)" if force else "")
    server._changed(True)
    return {"epoch": server.state.map.epoch}


def _parse_pgid(server: MasterServer, text: str) -> tuple[int, int]:
    """POOLID.PGHEX (as `store pg ls` prints) or POOLNAME.PGHEX."""
    pool_text, dot, pg_text = text.rpartition(".")
    m = server.state.map
    try:
        if not dot:
            raise ValueError
        pg = int(pg_text, 16)
        pool = m.pools.get(int(pool_text)) if pool_text.isdigit() else m.pool_by_name(pool_text)
    except (ValueError, StoreError):
        raise RemoteError(Code.EINVAL, f"bad PG id {text!r}: use POOL.PG, like 1.1f") from None
    if pool is None:
        raise RemoteError(Code.ENOENT, f"no pool with id {pool_text}")
    if not 0 <= pg < pool.pg_num:
        raise RemoteError(
            Code.ENOENT, f"pool {pool.name} has PGs 0..{pool.pg_num - 1:x}, not {pg:x}"
        )
    return pool.id, pg


def pg_rows(server: MasterServer) -> list[dict[str, Any]]:
    """Every PG of every pool, with its state as its primary last reported it."""
    m = server.state.map
    reported: dict[tuple[int, int], tuple[int, health.ReportedPg]] = {}
    for osd_id, report in server._up_reports().items():
        for entry in health.reported_pgs(report):
            reported[(entry.pool, entry.pg)] = (osd_id, entry)
    out: list[dict[str, Any]] = []
    for pool in m.pools.values():
        for pg in range(pool.pg_num):
            chosen = placement(m, pool.id, pg)
            acting = acting_set(m, pool.id, pg)
            found = reported.get((pool.id, pg))
            row = found[1] if found is not None and acting and found[0] == acting[0] else None
            if not acting:
                state = "down"
            elif row is not None:
                state = row.state
            else:
                state = "unknown"  # its primary has not reported it yet
            out.append(
                {
                    "pgid": f"{pool.id}.{pg:x}",
                    "pool": pool.name,
                    "state": state,
                    "placement": list(chosen),
                    "acting": list(acting),
                    "primary": acting[0] if acting else None,
                    "version": row.version if row else None,
                    "objects": row.objects if row else None,
                    "degraded": row.degraded if row else None,
                    "misplaced": row.misplaced if row else None,
                }
            )
    return out


def op_pg_ls(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    return {"epoch": server.state.map.epoch, "pgs": pg_rows(server)}


PG_ACTIONS = {"query": 30.0, "scrub": 3600.0, "deep-scrub": 3600.0, "repair": 3600.0}


def op_pg_admin(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    """Ask a PG's primary to do something (query, scrub, deep-scrub, repair) and answer
    with what it says."""
    pool, pg = _parse_pgid(server, _arg(args, "pgid", str))
    action = _arg(args, "action", str)
    if action not in PG_ACTIONS:
        raise RemoteError(Code.EINVAL, f"unknown action {action!r}: {', '.join(PG_ACTIONS)}")
    target = primary(server.state.map, pool, pg)
    if target is None:
        raise RemoteError(Code.EAGAIN, f"pg {pool}.{pg:x} is down: none of its daemons is up")
    daemon = server.daemons.get(target)
    if daemon is None:
        raise RemoteError(Code.EAGAIN, f"osd.{target}, primary of {pool}.{pg:x}, is not connected")
    return daemon.call(
        "pg_admin", {"pool": pool, "pg": pg, "action": action}, timeout=PG_ACTIONS[action]
    )


def op_auth_add(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    caps = auth.Caps.from_wire(_arg(args, "caps", dict))
    secret = server.state.client_add(name, caps)
    logs.register_secret(secret)
    log.info("client %r created (%s)", name, caps.describe())
    return {"name": name, "key": secret, "caps": caps.to_wire()}


def op_auth_ls(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    return {
        "clients": [
            {"name": c.name, "caps": c.caps.to_wire(), "created": c.created}
            for c in server.state.clients()
        ]
    }


def op_auth_rm(server: MasterServer, conn: RpcConnection, args: dict[str, Any]) -> Any:
    name = _arg(args, "name", str)
    if name == conn.context.get("client"):
        raise RemoteError(Code.EINVAL, "refusing to remove the key this request was made with")
    server.state.client_rm(name)
    log.info("client %r removed", name)
    return {}


DAEMON_OPS: dict[str, Op] = {
    "osd_boot": op_osd_boot,
    "osd_heartbeat": op_osd_heartbeat,
    "osd_stopping": op_osd_stopping,
    "osd_failure": op_osd_failure,
    "get_map": op_get_map,
    "subscribe": op_subscribe,
}
OPEN_OPS: dict[str, Op] = {
    "hello": op_hello,
    "auth_challenge": op_auth_challenge,
    "auth_prove": op_auth_prove,
}
CLIENT_OPS: dict[str, Op] = {
    "get_map": op_get_map,
    "subscribe": op_subscribe,
    "status": op_status,
    "pool_ls": op_pool_ls,
    "osd_ls": op_osd_ls,
    "pg_ls": op_pg_ls,
}
ADMIN_OPS: dict[str, Op] = {
    "pool_create": op_pool_create,
    "pool_set": op_pool_set,
    "pool_rm": op_pool_rm,
    "osd_set": op_osd_set,
    "osd_flag": op_osd_flag,
    "osd_rm": op_osd_rm,
    "pg_admin": op_pg_admin,
    "auth_add": op_auth_add,
    "auth_ls": op_auth_ls,
    "auth_rm": op_auth_rm,
}


KNOWN_OPS = (
    frozenset(DAEMON_OPS) | frozenset(OPEN_OPS) | frozenset(CLIENT_OPS) | frozenset(ADMIN_OPS)
)
