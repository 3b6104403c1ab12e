"""The storage daemon: one per disk.

Start-up order matters: the disk's identity and object store first, then the sockets
(so the addresses the master is told are real), then the master — only after the boot
answer does the daemon know its id, the map and the service keys it needs to open tickets.
From then on three things drive it: maps pushed by the master (each may start peering of
some PGs), datagrams from clients, and requests from peers.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from store import auth, configfile, threadsched
from store.client.udp import tune_buffers
from store.errors import ConfigError, StoreError
from store.osd import identity as identity_mod
from store.osd import reports, scrub
from store.osd.front import UdpFront
from store.osd.heartbeat import run_peer_heartbeats
from store.osd.objectstore import ObjectStore
from store.osd.peers import PeerLinks
from store.osd.pg import PlacementGroup
from store.osd.pgsplit import PgSplitTxn
from store.osd.sessions import SessionTable
from store.osd.throttle import RecoveryThrottle
from store.osd.write_queue import Completion, WriteQueue
from store.placement import ClusterMap, placement
from store.rpc import ConnectionLost, RpcConnection, parse_hostport
from store.tls import TlsPaths, client_context, peer_identity, server_context

log = logging.getLogger("store.osd")

RECENT_MAPS = 32
USAGE_REFRESH = 30.0  # seconds between object counts in the heartbeat report
PG_COUNT_REFRESH = 10.0  # ... while PGs we lead are recovering (degraded/misplaced counts)
# Seconds between looks at the disk's free space (statvfs: cheap). Writes go on between
# two looks, so at 150 MB/s a daemon may pass its full_ratio by 30 MB before refusing.
DISK_CHECK_INTERVAL = 0.2
BIND_ATTEMPTS = 20  # UDP ports tried when the kernel picks one and TCP has its number


@dataclass(frozen=True)
class DiskState:
    total: int  # bytes of the filesystem
    avail: int  # bytes this daemon may still use

    @property
    def used_ratio(self) -> float:
        return 1 - self.avail / self.total if self.total else 0.0


@dataclass
class OsdConfig:
    dir: Path
    master: str
    listen: str = "127.0.0.1:0"  # UDP for clients
    peer_listen: str | None = None  # TCP for peers; default: the UDP host and port
    advertise: str | None = None  # what clients are told; default: the bound UDP address
    advertise_peer: str | None = None
    host: str = field(default_factory=socket.gethostname)
    tls: TlsPaths | None = None
    heartbeat_interval: float = 2.0
    full_ratio: float = 0.95  # above this fraction of the disk, writes are refused
    nearfull_ratio: float = 0.85  # above this, `store status` warns
    pg_log_entries: int = 3000  # log entries kept per PG (catch-up by log below this)
    peer_grace: float = 20.0  # seconds a peer sharing PGs may be silent before we report it
    max_backfills: int = 1  # PG recoveries at once, as source or target
    recovery_max_rate: float = 0.0  # MB/s of recovery traffic we send; 0: no limit
    scrub_interval: float = 86400.0  # seconds between light scrubs of a PG; 0: on demand only
    deep_scrub_interval: float = 604800.0  # seconds between deep scrubs; 0: on demand only
    scrub_auto_repair: bool = True  # repair what any scrub finds, not only on `pg repair`
    metrics: str | None = None  # HOST:PORT for /metrics, /healthz, /readyz, /config
    running_config: dict[str, Any] | None = None  # the effective settings, masked


class OsdDaemon:
    def __init__(self, config: OsdConfig) -> None:
        self.config = config
        self.identity = identity_mod.load_or_init(config.dir)
        # The database is DIR/store.db, the data DIR/blocks.dat.
        self.store = ObjectStore(str(config.dir), max_log_entries=config.pg_log_entries)
        self.writes = WriteQueue(self.store)
        self.throttle = RecoveryThrottle(config.max_backfills, config.recovery_max_rate)
        self.osd_id: int = self.identity.osd_id if self.identity.osd_id is not None else -1
        self.map = ClusterMap(epoch=0, fsid="", created=0.0, osds={}, pools={})
        self.service_keys = auth.ServiceKeys()
        self.pgs: dict[tuple[int, int], PlacementGroup] = {}
        # Maps of recent epochs: a new primary asks who held its PGs in them.
        self.recent_maps: deque[ClusterMap] = deque(maxlen=RECENT_MAPS)
        self.full = False
        self.nearfull = False
        self.disk: DiskState | None = None
        self.full_osds: frozenset[int] = frozenset()  # daemons the master says are full
        self._early_map: ClusterMap | None = None
        self._pg_nums: dict[int, int] = {}  # pool -> pg_num our store is split to
        self._pool_ready: dict[int, Completion] = {}
        self._map_changed = trio.Event()
        self._usage: dict[str, int] = {}
        self._usage_at = -1e9
        self._pg_objects: dict[tuple[int, int], int] = {}
        self._pg_objects_at = -1e9
        self._pg_objects_busy = False
        self._nursery: trio.Nursery | None = None
        self.master: RpcConnection | None = None
        self.udp_address: tuple[str, int] | None = None
        self.peer_address: tuple[str, int] | None = None

    # --- PgHost protocol -------------------------------------------------------------

    async def peer(self, osd_id: int) -> RpcConnection:
        return await self.peers.get(osd_id)

    def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    # --- running -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        tls = self.config.tls
        if tls is None:
            raise ConfigError(
                "the daemon needs TLS files (--tls-dir or --peer-cert/--peer-key/--peer-ca-cert)"
            )
        tls.check()
        self._check_disk()
        if self.config.running_config is not None:
            configfile.write_running(self.config.dir, self.config.running_config)
        udp, listeners = await self._bind()
        self.peers = PeerLinks(
            self,
            server_context(tls.cert, tls.key, tls.ca, client_certs="required"),
            client_context(tls.ca, tls.cert, tls.key, check_hostname=False),
        )
        self.front = UdpFront(self, udp)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.writes.run)
                nursery.start_soon(self.peers.serve, listeners)
                nursery.start_soon(self._watch_disk)
                await self._start_metrics(nursery)
                await self._boot()
                sessions = SessionTable(self.osd_id, lambda: self.service_keys, time.time)
                nursery.start_soon(self.front.run, sessions)
                nursery.start_soon(self._master_loop)
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(run_peer_heartbeats, self)
                nursery.start_soon(scrub.run_scheduler, self)
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                log.info(
                    "osd.%d serving: udp %s, peer %s, host %s",
                    self.osd_id,
                    self.advertised_udp,
                    self.advertised_peer,
                    self.config.host,
                )
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self._say_goodbye()
            self.store.close()
            udp.close()
            log.info("osd.%d stopped", self.osd_id)

    async def _start_metrics(self, nursery: trio.Nursery) -> None:
        from store.metrics.endpoint import start_metrics
        from store.metrics.osd import osd_collector

        def ready() -> str | None:
            if self.osd_id < 0 or self.map.epoch == 0:
                return "not booted with the master yet"
            if self.master is None or self.master.closed.is_set():
                return "reconnecting to the master"
            return None

        await start_metrics(
            nursery,
            self.config.metrics,
            "osd",
            collectors=[osd_collector(self)],
            ready=ready,
            config=self.config.running_config,
        )

    async def _bind(self) -> tuple[socket.socket, list[trio.SocketListener]]:
        host, port = parse_hostport(self.config.listen)
        for attempt in range(BIND_ATTEMPTS):
            udp = socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
            )
            try:
                tune_buffers(udp, 16 * 1024 * 1024)
                udp.bind((host, port))
                self.udp_address = udp.getsockname()[:2]
                if self.config.peer_listen:
                    peer_host, peer_port = parse_hostport(self.config.peer_listen)
                else:
                    peer_host, peer_port = host, self.udp_address[1]
                listeners = await trio.open_tcp_listeners(peer_port, host=peer_host)
            except OSError as exc:
                udp.close()
                # With port 0 the kernel picks a free UDP port, and the peer port takes the
                # same number, which a TCP connection may be using: pick another.
                chosen = port == 0 and not self.config.peer_listen
                if chosen and exc.errno == errno.EADDRINUSE and attempt + 1 < BIND_ATTEMPTS:
                    continue
                raise
            self.peer_address = listeners[0].socket.getsockname()[:2]
            return udp, listeners
        raise AssertionError("unreachable")

    @property
    def advertised_udp(self) -> str:
        if self.config.advertise:
            return self.config.advertise
        assert self.udp_address is not None
        host, port = self.udp_address
        if host in ("0.0.0.0", "::"):
            raise ConfigError(
                "listening on all addresses: say which one clients use with --advertise HOST:PORT"
            )
        return f"{host}:{port}"

    @property
    def advertised_peer(self) -> str:
        if self.config.advertise_peer:
            return self.config.advertise_peer
        assert self.peer_address is not None
        host, port = self.peer_address
        if host in ("0.0.0.0", "::"):
            host = parse_hostport(self.advertised_udp)[0]
        return f"{host}:{port}"

    # --- the master ----------------------------------------------------------------------

    async def _connect_master(self) -> RpcConnection:
        assert self.config.tls is not None and self._nursery is not None
        tls = self.config.tls
        host, port = parse_hostport(self.config.master)
        context = client_context(tls.ca, tls.cert, tls.key)
        with trio.fail_after(10):
            tcp = await trio.open_tcp_stream(host, port)
            stream = trio.SSLStream(tcp, context, server_hostname=host)
            await stream.do_handshake()
        if peer_identity(stream) is None:  # type: ignore[arg-type]
            raise ConfigError("the master presented no certificate")
        conn = RpcConnection(
            stream,
            handler=functools.partial(reports.answer_master, self),
            on_event=self._on_master_event,
            name="master",
        )
        self._nursery.start_soon(conn.run)
        return conn

    async def _boot(self) -> None:
        delay = 0.5
        while True:
            try:
                conn = await self._connect_master()
                result = await conn.call(
                    "osd_boot",
                    {
                        "uuid": self.identity.uuid,
                        "osd_id": self.identity.osd_id,
                        "host": self.config.host,
                        "addr": self.advertised_udp,
                        "peer_addr": self.advertised_peer,
                    },
                )
                break
            except (OSError, StoreError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                if isinstance(exc, ConfigError):
                    raise
                log.warning(
                    "cannot boot with the master at %s: %s; retrying", self.config.master, exc
                )
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.master = conn
        new_map = ClusterMap.from_wire(result["map"])
        if self.identity.fsid not in (None, new_map.fsid):
            raise ConfigError(
                f"{self.config.dir} belongs to cluster {self.identity.fsid}, not {new_map.fsid}"
            )
        self.osd_id = int(result["osd_id"])
        if (self.identity.osd_id, self.identity.fsid) != (self.osd_id, new_map.fsid):
            self.identity.osd_id, self.identity.fsid = self.osd_id, new_map.fsid
            identity_mod.save(self.config.dir, self.identity)
        self.service_keys = auth.ServiceKeys.from_wire(result["service_keys"])
        self._set_full_osds(result.get("full", []))
        self.apply_map(new_map)
        if self._early_map is not None:
            self.apply_map(self._early_map)
            self._early_map = None

    def _on_master_event(self, name: str, args: dict[str, Any]) -> None:
        if name == "map":
            new = ClusterMap.from_wire(args["map"])
            if self.osd_id < 0:  # pushed before the answer to our boot: keep it for then
                if self._early_map is None or new.epoch > self._early_map.epoch:
                    self._early_map = new
                return
            self.apply_map(new)
        elif name == "service_keys":
            self.service_keys = auth.ServiceKeys.from_wire(args["keys"])
        elif name == "full":
            self._set_full_osds(args.get("osds", []))

    def _set_full_osds(self, raw: object) -> None:
        if isinstance(raw, list) and all(isinstance(i, int) for i in raw):
            self.full_osds = frozenset(raw)

    async def _master_loop(self) -> None:
        """Reconnect and boot again whenever the master link drops."""
        while True:
            assert self.master is not None
            await self.master.closed.wait()
            log.warning("lost the master at %s; reconnecting", self.config.master)
            await trio.sleep(0.5)
            await self._boot()

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.config.heartbeat_interval)
            self._check_disk()
            self.front.stages.area.sweep(time.monotonic())  # stages abandoned by their clients
            if self.master is None or self.master.closed.is_set():
                continue
            try:
                await self.master.call(
                    "osd_heartbeat",
                    reports.heartbeat_report(self),
                    timeout=self.config.heartbeat_interval * 2,
                )
            except (StoreError, ConnectionLost) as exc:
                log.debug("heartbeat failed: %s", exc)

    @property
    def usage(self) -> dict[str, int]:
        """Objects and bytes stored, counted at most every USAGE_REFRESH seconds."""
        now = trio.current_time()
        if now - self._usage_at >= USAGE_REFRESH:
            # Counting objects scans a table: not on every heartbeat of a big disk.
            self._usage, self._usage_at = self.store.usage(), now
        return self._usage

    def pg_objects(self, *, busy: bool) -> dict[tuple[int, int], int]:
        """Live objects per PG, counted at most every PG_COUNT_REFRESH seconds while PGs
        we lead are `busy` (not all clean), every USAGE_REFRESH seconds otherwise."""
        now = trio.current_time()
        age = now - self._pg_objects_at
        # Counted afresh when PGs start recovering: their counts are what is shown then.
        if age >= (PG_COUNT_REFRESH if busy else USAGE_REFRESH) or busy > self._pg_objects_busy:
            self._pg_objects, self._pg_objects_at = self.store.pg_object_counts(), now
        self._pg_objects_busy = busy
        return self._pg_objects

    async def _watch_disk(self) -> None:
        while True:
            await trio.sleep(DISK_CHECK_INTERVAL)
            self._check_disk()

    def _check_disk(self) -> None:
        """Refuse writes above full_ratio, warn above nearfull_ratio (and log each change)."""
        try:
            st = os.statvfs(self.config.dir)
        except OSError as exc:
            log.warning("cannot see the free space of %s: %s", self.config.dir, exc)
            return
        # The data file never shrinks: its free slots are free space too (they are reused
        # before the file grows), or a full daemon would stay full after deletes.
        space = self.store.space.stats()
        reusable = max(0, space["data_span_bytes"] - space["data_slots"] * self.store.block_size)
        total = st.f_blocks * st.f_frsize
        self.disk = disk = DiskState(total, min(total, st.f_bavail * st.f_frsize + reusable))
        used = disk.used_ratio
        full = used >= self.config.full_ratio
        nearfull = not full and used >= self.config.nearfull_ratio
        if full != self.full:
            if full:
                log.warning(
                    "osd.%d is full: %.0f%% of its disk used (full_ratio %.0f%%): refusing writes",
                    self.osd_id,
                    used * 100,
                    self.config.full_ratio * 100,
                )
            else:
                log.warning(
                    "osd.%d is no longer full (%.0f%% used): accepting writes",
                    self.osd_id,
                    used * 100,
                )
        elif nearfull and not self.nearfull:
            log.warning(
                "osd.%d is nearly full: %.0f%% of its disk used (nearfull_ratio %.0f%%)",
                self.osd_id,
                used * 100,
                self.config.nearfull_ratio * 100,
            )
        elif self.nearfull and not nearfull and not full:
            log.info("osd.%d is no longer nearly full (%.0f%% used)", self.osd_id, used * 100)
        self.full, self.nearfull = full, nearfull

    def full_reason(self, acting: tuple[int, ...]) -> str | None:
        """Why a write to a PG with this acting set is refused for space, or None."""
        if self.full and self.disk is not None:
            return (
                f"osd.{self.osd_id} is full ({self.disk.used_ratio:.0%} of its disk used, "
                f"full_ratio {self.config.full_ratio:.0%}): writes are refused until data is "
                "deleted or capacity added; reads and deletes still work"
            )
        for member in acting:
            if member in self.full_osds:
                return (
                    f"osd.{member}, which holds a copy of this object's PG, is full: writes "
                    "are refused until data is deleted or capacity added; reads and deletes "
                    "still work"
                )
        return None

    async def _say_goodbye(self) -> None:
        if self.master is not None and not self.master.closed.is_set():
            with trio.move_on_after(2):
                try:
                    await self.master.call("osd_stopping", {}, timeout=2)
                except (StoreError, ConnectionLost):
                    pass

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("osd.%d stopping (signal %d)", self.osd_id, signum)
                scope.cancel()
                return

    # --- maps ----------------------------------------------------------------------------

    def apply_map(self, new: ClusterMap) -> None:
        if new.epoch <= self.map.epoch:
            return
        old = self.map
        if self.map.epoch:
            self.recent_maps.append(self.map)
        self.map = new
        self._map_changed.set()
        self._map_changed = trio.Event()
        log.info("osd.%d now at epoch %d", self.osd_id, new.epoch)
        if old.epoch:
            self._log_peer_changes(old, new)
        for pool in new.pools.values():
            self._split_if_grown(pool.id, pool.seed, pool.pg_num)
        wanted: set[tuple[int, int]] = set()
        for pool in new.pools.values():
            for pg in range(pool.pg_num):
                if self.osd_id in placement(new, pool.id, pg):
                    wanted.add((pool.id, pg))
        # PGs we still hold data of but no longer serve: their stray copies retire.
        held = {
            (pool_id, pg)
            for pool_id, pg in self.store.pgs()
            if pool_id in new.pools and pg < new.pools[pool_id].pg_num
        }
        for key in wanted | set(self.pgs) | held:
            pgobj = self.pgs.get(key)
            if pgobj is None:
                pgobj = self.pgs[key] = PlacementGroup(self, *key)
            if key[0] not in new.pools:
                pgobj.stop()
                del self.pgs[key]
                continue
            pgobj.on_map(new)

    def _log_peer_changes(self, old: ClusterMap, new: ClusterMap) -> None:
        for osd_id, info in sorted(new.osds.items()):
            if osd_id == self.osd_id:
                continue
            before = old.osds.get(osd_id)
            if before is not None and before.up and not info.up:
                log.warning("peer osd.%d lost: down in epoch %d", osd_id, new.epoch)
            elif before is not None and not before.up and info.up:
                log.info("peer osd.%d regained: up in epoch %d", osd_id, new.epoch)
            elif before is None and info.up:
                log.info("peer osd.%d joined in epoch %d", osd_id, new.epoch)
        for osd_id in sorted(set(old.osds) - set(new.osds)):
            log.info("peer osd.%d left the map in epoch %d", osd_id, new.epoch)

    def _split_if_grown(self, pool_id: int, seed: int, pg_num: int) -> None:
        known = self._pg_nums.get(pool_id)
        if known is None:
            known = self.store.pool_pg_num(pool_id)
        if known == pg_num:
            self._pg_nums[pool_id] = pg_num
            return
        if known is not None and known > pg_num:
            log.error("pool %d shrank from %d to %d pgs: not supported", pool_id, known, pg_num)
            return
        if known is not None:
            log.info("pool %d: splitting %d pgs into %d", pool_id, known, pg_num)
        self._pg_nums[pool_id] = pg_num
        split = PgSplitTxn(pool_id, seed, known if known is not None else pg_num, pg_num)
        self._pool_ready[pool_id] = self.writes.submit(split)

    async def wait_for_epoch(self, epoch: int, timeout: float = 10.0) -> None:
        """Wait (a while) until we have seen map `epoch`."""
        with trio.move_on_after(timeout):
            while self.map.epoch < epoch:
                await self._map_changed.wait()

    async def pool_ready(self, pool_id: int) -> None:
        """Wait until the store is split to the pool's current pg_num."""
        completion = self._pool_ready.get(pool_id)
        if completion is not None:
            await completion.wait()


def run_osd(config: OsdConfig) -> None:
    os.umask(0o077)
    threadsched.run_as_batch()
    trio.run(OsdDaemon(config).run)
