"""The master daemon: a TLS server in front of ``MasterState``.

Daemons connect with a certificate from the cluster CA (its role says ``osd``); clients
connect without one and prove their key by challenge-response before anything else. Both
may subscribe to maps; every new epoch is pushed to every subscriber as an ``map`` event.
Background tasks mark silent daemons down and rotate the service keys.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from store import auth, configfile, health, logs
from store.errors import Code, RemoteError, StoreError
from store.master.failures import FailureTracker
from store.master.state import MasterState
from store.placement import ClusterMap, acting_set, placement, primary
from store.rpc import RpcConnection, parse_hostport
from store.tls import TlsPaths, peer_identity, server_context

log = logging.getLogger("store.master")

MAX_MASTER_FRAME = 16 * 1024 * 1024


@dataclass
class MasterConfig:
    data_dir: Path
    listen: str = "127.0.0.1:6789"
    tls_dir: Path = Path("tls")
    osd_grace: float = 20.0  # seconds without heartbeat before a daemon is marked down
    down_out_interval: float = 600.0  # seconds down before marked out; 0: never automatically
    min_down_reporters: int = 2  # peers that must report a daemon silent to mark it down
    ticket_ttl: float = 3600.0
    key_rotation: float = 3600.0
    metrics: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz, /config
    dashboard: str | None = None  # HOST:PORT for the web dashboard (HTTPS)
    running_config: dict[str, Any] | None = None  # the effective settings, masked


class MasterServer:
    def __init__(self, config: MasterConfig) -> None:
        self.config = config
        self.state = MasterState(config.data_dir)
        admin_secret = self.state.ensure_admin()
        if admin_secret is not None:
            logs.register_secret(admin_secret)
            keyfile = config.data_dir / "admin.key"
            auth.write_keyfile(keyfile, "admin", admin_secret)
            log.info("new cluster %s: admin key written to %s", self.state.map.fsid, keyfile)
        self.state.rotate_service_keys(time.time(), config.key_rotation, config.ticket_ttl)
        self.subscribers: set[RpcConnection] = set()
        self.daemons: dict[int, RpcConnection] = {}
        # Filled when serving starts: a restarted master gives every daemon the grace
        # period to say it is alive.
        self.last_heartbeat: dict[int, float] = {}
        self.bound_port: int | None = None
        self.reports: dict[int, dict[str, Any]] = {}  # latest heartbeat report per daemon
        self.previous_reports: dict[int, dict[str, Any]] = {}  # the one before (for rates)
        self.full_osds: frozenset[int] = frozenset()  # up daemons refusing writes
        self.failures = FailureTracker(config.min_down_reporters)
        # Plain counters, read by store.metrics.master at scrape time.
        self.requests: Counter[str] = Counter()
        self.authentications: Counter[tuple[str, str]] = Counter()  # (kind, result)
        self.heartbeats = 0
        self.connections: Counter[str] = Counter()  # open, by role
        self.ready = False
        self.dashboard_port: int | None = None

    # --- serving ---------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        paths = TlsPaths.in_dir(self.config.tls_dir, "master")
        paths.check()
        context = server_context(paths.cert, paths.key, paths.ca, client_certs="optional")
        host, port = parse_hostport(self.config.listen)
        now = trio.current_time()
        self.last_heartbeat = {i: now for i in self.state.map.osds}
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.bound_port = listeners[0].socket.getsockname()[1]
        log.info(
            "master of cluster %s listening on %s:%d at epoch %d",
            self.state.map.fsid,
            host,
            self.bound_port,
            self.state.map.epoch,
        )
        if self.config.running_config is not None:
            configfile.write_running(self.config.data_dir, self.config.running_config)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_heartbeats)
                nursery.start_soon(self._rotate_keys)
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                ssl_listeners = [trio.SSLListener(lst, context) for lst in listeners]
                await nursery.start(trio.serve_listeners, self._handle_stream, ssl_listeners)
                await self._start_http(nursery, paths)
                self.ready = True
                task_status.started(self.bound_port)
        finally:
            log.info("master of cluster %s stopped", self.state.map.fsid)

    async def _start_http(self, nursery: trio.Nursery, paths: TlsPaths) -> None:
        from store.metrics.endpoint import start_metrics
        from store.metrics.master import master_collector

        await start_metrics(
            nursery,
            self.config.metrics,
            "master",
            collectors=[master_collector(self)],
            ready=lambda: None if self.ready else "starting",
            config=self.config.running_config,
        )
        if self.config.dashboard:
            from store.master.dashboard.handler import Dashboard, tls_context

            host, port = parse_hostport(self.config.dashboard)
            context = tls_context(paths.cert, paths.key)
            dashboard = Dashboard(self)
            self.dashboard_port = await nursery.start(
                functools.partial(dashboard.serve, host, port, context)
            )

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("master stopping (signal %d)", signum)
                scope.cancel()
                return

    async def _handle_stream(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            await self._serve_stream(stream)
        except Exception:
            log.exception("connection handler failed")

    async def _serve_stream(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        try:
            with trio.fail_after(10):
                await stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
            log.info("refused a connection: TLS handshake failed (%s)", _reason(exc))
            await trio.aclose_forcefully(stream)
            return
        identity = peer_identity(stream)  # type: ignore[arg-type]
        # Maps and key lists are small; nothing a client sends the master needs more.
        conn = RpcConnection(stream, name="peer", max_frame=MAX_MASTER_FRAME)
        role = identity.role if identity else "client"
        conn.context["role"] = role
        conn.context["cert_name"] = identity.name if identity else None
        conn._handler = self._handler_for(conn)
        self.connections[role] += 1
        try:
            await conn.run()
        finally:
            self.connections[role] -= 1
            self.subscribers.discard(conn)
            for osd_id, c in list(self.daemons.items()):
                if c is conn:
                    del self.daemons[osd_id]

    def _handler_for(self, conn: RpcConnection) -> Callable[[str, dict[str, Any]], Any]:
        def handle(op: str, args: dict[str, Any]) -> Any:
            role = conn.context["role"]
            self.requests[op if op in KNOWN_OPS else "unknown"] += 1
            if role == "osd" and op in DAEMON_OPS:
                return DAEMON_OPS[op](self, conn, args)
            if op in OPEN_OPS:
                return OPEN_OPS[op](self, conn, args)
            caps: auth.Caps | None = conn.context.get("caps")
            if caps is None:
                if not conn.context.get("refusal_logged"):  # once a connection, not a flood
                    conn.context["refusal_logged"] = True
                    log.warning(
                        "refused %s from an unauthenticated %s connection: authenticate first",
                        _printable(op),
                        role,
                    )
                raise RemoteError(Code.EAUTH, "authenticate first (auth_challenge, auth_prove)")
            if op in CLIENT_OPS:
                return CLIENT_OPS[op](self, conn, args)
            if op in ADMIN_OPS:
                if not caps.admin:
                    log.warning("refused %s to %s: not an admin key", op, conn.name)
                    raise RemoteError(Code.EPERM, f"{op} needs an admin key")
                return ADMIN_OPS[op](self, conn, args)
            raise RemoteError(Code.EINVAL, f"unknown operation {op!r}")

        return handle

    # --- map publication -------------------------------------------------------------

    def publish(self) -> None:
        """Push the current map to every subscriber (called after each new epoch)."""
        m = self.state.map
        log.info("epoch %d: %s", m.epoch, _summary(m))
        wire = m.to_wire()
        for conn in list(self.subscribers):
            conn.send_event("map", {"map": wire})

    def _changed(self, changed: bool) -> None:
        if changed:
            self.publish()
            self._update_full()

    def _update_full(self) -> None:
        """Tell the daemons which daemons refuse writes, whenever that changes: a primary
        refuses writes to PGs with a copy on a full daemon (as Ceph's full flag does)."""
        m = self.state.map
        full = frozenset(
            i
            for i, r in self.reports.items()
            if r.get("full") is True and i in m.osds and m.osds[i].up
        )
        if full == self.full_osds:
            return
        self.full_osds = full
        log.warning(
            "daemons refusing writes (full): %s",
            ", ".join(f"osd.{i}" for i in sorted(full)) or "none",
        )
        for conn in list(self.daemons.values()):
            conn.send_event("full", {"osds": sorted(full)})

    def status_result(self) -> dict[str, Any]:
        """What `store status` is made from: the map, up daemons' reports, the master's
        own figures."""
        m = self.state.map
        return {
            "fsid": m.fsid,
            "epoch": m.epoch,
            "map": m.to_wire(),
            "reports": self._up_reports(),
            "master": self._master_figures(),
            "rates": self._rates(),
        }

    def _rates(self) -> dict[str, float]:
        """Cluster-wide per-second rates (client I/O, recovery) over the last heartbeats."""
        from store.master.dashboard.view import RATES, rates

        totals = dict.fromkeys(RATES, 0.0)
        for osd_id, report in self._up_reports().items():
            for name, value in rates(report, self.previous_reports.get(osd_id)).items():
                totals[name] += value
        return totals

    def cluster_view(self) -> health.ClusterView:
        """The same, for the dashboard and the metrics, without copying the map."""
        return health.ClusterView.build(self.state.map, self._up_reports(), self._master_figures())

    def _up_reports(self) -> dict[int, dict[str, Any]]:
        m = self.state.map
        return {i: r for i, r in self.reports.items() if i in m.osds and m.osds[i].up}

    def _master_figures(self) -> dict[str, Any]:
        return {
            "time": time.time(),
            "service_key_gen": self.state.service_keys().current().gen,
            "osd_grace": self.config.osd_grace,
        }

    async def _watch_heartbeats(self) -> None:
        while True:
            await trio.sleep(min(1.0, self.config.osd_grace / 4))
            now = trio.current_time()
            silent = [
                osd_id
                for osd_id, info in self.state.map.osds.items()
                if info.up and now - self.last_heartbeat.get(osd_id, now) > self.config.osd_grace
            ]
            if silent:
                log.warning(
                    "marking down silent daemons: %s", ", ".join(f"osd.{i}" for i in silent)
                )
                self._changed(self.state.osds_set_up(silent, False))
            self.check_failure_reports()
            self._mark_out_long_down()

    def up_osds(self) -> set[int]:
        return {i for i, info in self.state.map.osds.items() if info.up}

    def check_failure_reports(self) -> None:
        """Mark down the daemons enough peers report silent."""
        decided = self.failures.to_mark_down(trio.current_time(), self.up_osds())
        if not decided:
            return
        for target, reporters in decided.items():
            log.warning(
                "marking osd.%d down: reported silent by %s",
                target,
                ", ".join(f"osd.{r}" for r in reporters),
            )
        self._changed(self.state.osds_set_up(sorted(decided), False))

    def _mark_out_long_down(self) -> None:
        interval = self.config.down_out_interval
        if interval <= 0:
            return
        due = self.state.down_too_long(time.time(), interval)
        if due:
            log.warning(
                "marking out %s: down for more than %gs; their data is copied elsewhere",
                ", ".join(f"osd.{i}" for i in due),
                interval,
            )
            self._changed(self.state.osds_auto_out(due))

    async def _rotate_keys(self) -> None:
        while True:
            await trio.sleep(min(60.0, self.config.key_rotation / 4))
            if self.state.rotate_service_keys(
                time.time(), self.config.key_rotation, self.config.ticket_ttl
            ):
                log.info(
                    "service key rotated to generation %d", self.state.service_keys().current().gen
                )
                wire = self.state.service_keys().to_wire()
                for conn in list(self.daemons.values()):
                    conn.send_event("service_keys", {"keys": wire})


# --- operations ----------------------------------------------------------------------
# Each takes (server, connection, args) and returns a msgpack-able result.

Op = Callable[[MasterServer, RpcConnection, dict[str, Any]], Any]


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
    reported: dict[tuple[int, int], list[Any]] = {}
    for osd_id, report in server._up_reports().items():
        rows = report.get("pg_list")
        if not isinstance(rows, list):
            continue
        for row in rows:
            if isinstance(row, list) and len(row) >= 4:
                reported[(row[0], row[1])] = [osd_id, *row[2:]]
    out: list[dict[str, Any]] = []
    for pool in m.pools.values():
        for pg in range(pool.pg_num):
            chosen = placement(m, pool.id, pg)
            acting = acting_set(m, pool.id, pg)
            found = reported.get((pool.id, pg))
            if not acting:
                state, version = "down", None
            elif found is not None and found[0] == acting[0]:
                state, version = found[1], found[2]
            else:
                state, version = "unknown", None  # its primary has not reported it yet
            out.append(
                {
                    "pgid": f"{pool.id}.{pg:x}",
                    "pool": pool.name,
                    "state": state,
                    "placement": list(chosen),
                    "acting": list(acting),
                    "primary": acting[0] if acting else None,
                    "version": version,
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


def _printable(op: object) -> str:
    # The name of an operation comes from the peer: bound its length before logging it.
    return repr(op)[:64]


def _summary(m: ClusterMap) -> str:
    up = sum(1 for o in m.osds.values() if o.up)
    in_ = sum(1 for o in m.osds.values() if o.in_)
    return f"{len(m.osds)} daemons, {up} up, {in_} in; {len(m.pools)} pools"


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc
    return str(cause) or type(cause).__name__


def run_master(config: MasterConfig) -> None:
    os.umask(0o077)
    server = MasterServer(config)
    trio.run(server.serve)
