"""The master daemon: a TLS server in front of ``MasterState``.

Daemons connect with a certificate from the cluster CA (its role says ``osd``); clients
connect without one and prove their key by challenge-response before anything else. Both
may subscribe to maps; every new epoch is pushed to every subscriber as an ``map`` event.
Background tasks mark silent daemons down (and out, later) and rotate the service keys.
The operations themselves are in ``store.master.ops``.
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
from store.errors import Code, RemoteError
from store.master.failures import FailureTracker
from store.master.ops import ADMIN_OPS, CLIENT_OPS, DAEMON_OPS, KNOWN_OPS, OPEN_OPS
from store.master.state import MasterState
from store.placement import ClusterMap
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
