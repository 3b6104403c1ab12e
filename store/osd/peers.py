"""Daemon-to-daemon links: TCP with mutual TLS, and the operations peers ask of each other.

Each daemon serves a peer port. Only certificates from the cluster CA with the ``osd`` role
get in; when a daemon connects out it also checks that the certificate of the other side
names the daemon the map says lives at that address. A link carries requests one way (the
connecting daemon asks, the other answers); two daemons that both need to ask hold two
links.

The links use ``store.tlsstream.TlsStream``: OpenSSL on the socket itself, every TLS
record waiting decrypted per read, straight into the reader's buffer.

Forwarded writes (``repop``) are queued for the disk in the reader task, in arrival order
(see ``store.rpc``), so a replica applies them in the order the primary versioned them.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any

import trio

from store.errors import AuthError, ChecksumError, Code, RemoteError
from store.metrics.osd import PEER_TRAFFIC
from store.osd.blocksums import attach_sums_untrusted
from store.osd.ops import (
    InvalidRequest,
    attach_data_untrusted,
    parse_ops_untrusted,
    parse_version_untrusted,
)
from store.osd.pg import replica_txn_from_wire
from store.osd.pglog import entries_from_wire
from store.osd.pgrecovery import ADOPT_LOG_ENTRIES
from store.osd.scrub import parse_scrub_map_args_untrusted, read_scrub_page
from store.osd.txns import ObjectState, ObjectStateTxn, PgResetLogTxn, TxnResult
from store.placement import primary
from store.rpc import TAIL_ARG, Later, RpcConnection, parse_hostport
from store.tls import peer_identity
from store.tlsstream import TlsStream

if TYPE_CHECKING:
    from store.osd.daemon import OsdDaemon

log = logging.getLogger("store.osd")


class PeerLinks:
    def __init__(
        self, daemon: OsdDaemon, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
    ) -> None:
        self.daemon = daemon
        self.server_ctx = server_ctx
        self.server_ctx.num_tickets = 0  # peers never resume sessions (store.tlsstream)
        self.client_ctx = client_ctx
        self.links: dict[int, RpcConnection] = {}
        self._locks: dict[int, trio.Lock] = {}

    # --- outgoing ------------------------------------------------------------------------

    async def get(self, osd_id: int) -> RpcConnection:
        conn = self.links.get(osd_id)
        if conn is not None and not conn.closed.is_set():
            return conn
        lock = self._locks.setdefault(osd_id, trio.Lock())
        async with lock:
            conn = self.links.get(osd_id)
            if conn is not None and not conn.closed.is_set():
                return conn
            conn = await self._connect(osd_id)
            self.links[osd_id] = conn
            return conn

    async def _connect(self, osd_id: int) -> RpcConnection:
        info = self.daemon.map.osds.get(osd_id)
        if info is None:
            raise RemoteError(Code.ENOENT, f"osd.{osd_id} is not in the map")
        host, port = parse_hostport(info.peer_addr)
        try:
            with trio.fail_after(5):
                tcp = await trio.open_tcp_stream(host, port)
                stream = TlsStream(tcp, self.client_ctx, server_side=False)
                await stream.do_handshake()
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise RemoteError(
                Code.ETIMEDOUT, f"cannot reach osd.{osd_id} at {info.peer_addr}: {exc}"
            ) from None
        identity = peer_identity(stream.ssl_object)
        if identity is None or identity.role != "osd" or identity.name != info.cert_name:
            await trio.aclose_forcefully(stream)
            raise AuthError(
                f"the daemon at {info.peer_addr} presented {identity!r}, not osd.{osd_id}'s "
                f"certificate {info.cert_name!r}"
            )
        conn = RpcConnection(stream, name=f"osd.{osd_id}")
        self.daemon.start_task(conn.run)
        return conn

    # --- incoming ------------------------------------------------------------------------

    async def serve(self, listeners: list[trio.SocketListener]) -> None:
        await trio.serve_listeners(self._handle_stream, listeners)

    async def _handle_stream(self, tcp: trio.SocketStream) -> None:
        try:
            await self._serve_stream(TlsStream(tcp, self.server_ctx, server_side=True))
        except Exception:
            log.exception("peer connection handler failed")

    async def _serve_stream(self, stream: TlsStream) -> None:
        try:
            with trio.fail_after(10):
                await stream.do_handshake()
            identity = peer_identity(stream.ssl_object)
        except (trio.BrokenResourceError, trio.TooSlowError, OSError, AuthError) as exc:
            log.warning("refused a peer connection: %s", exc.__cause__ or exc)
            await trio.aclose_forcefully(stream)
            return
        if identity is None or identity.role != "osd":
            log.warning("refused a peer connection from %r: not a daemon certificate", identity)
            await trio.aclose_forcefully(stream)
            return
        conn = RpcConnection(stream, handler=self.handle, name=f"peer {identity.name}")
        await conn.run()

    def handle(self, op: str, args: dict[str, Any]) -> Any:
        handler = PEER_OPS.get(op)
        if handler is None:
            raise RemoteError(Code.EINVAL, f"unknown peer operation {op!r}")
        try:
            return handler(self.daemon, args)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RemoteError(Code.EINVAL, f"malformed {op}: {exc!r}") from None

    async def aclose(self) -> None:
        for conn in list(self.links.values()):
            await conn.aclose()


# --- operations a peer may ask -------------------------------------------------------


def _pool_pg(args: dict[str, Any]) -> tuple[int, int]:
    return int(args["pool"]), int(args["pg"])


def _check_sender_is_primary(daemon: OsdDaemon, pool: int, pg: int, args: dict[str, Any]) -> None:
    """Refuse a daemon that is no longer this PG's primary (by our newer map): it would
    write history the new primary does not know."""
    sender_epoch = int(args.get("epoch", 0))
    current = primary(daemon.map, pool, pg)
    if (
        sender_epoch < daemon.map.epoch
        and current is not None
        and current != args.get("from", current)
    ):
        raise RemoteError(Code.ESTALE, "sender is not the primary of this pg any more")


def op_repop(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    pool, pg = _pool_pg(args)
    _check_sender_is_primary(daemon, pool, pg, args)
    raw_ops = args["ops"]
    tail = args.get(TAIL_ARG)
    if tail is not None:
        raw_ops = attach_data_untrusted(raw_ops, tail)
    try:
        ops = attach_sums_untrusted(
            parse_ops_untrusted(raw_ops), args.get("sums"), daemon.store.block_size
        )
    except InvalidRequest as exc:
        raise RemoteError(Code.EINVAL, f"repop: {exc.message}") from None
    txn = replica_txn_from_wire(args, ops)
    PEER_TRAFFIC.repop_received(txn.ops)
    later = Later()  # answered from the commit's callback: no task per replicated write

    def done(result: TxnResult) -> None:
        if result.code == Code.OK:
            later.resolve({"v": list(result.version)})
        else:
            later.fail(RemoteError(result.code, result.message))

    daemon.writes.submit(txn, done)
    return later


def op_pg_info(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    pool, pg = _pool_pg(args)
    epoch = int(args.get("epoch", 0))

    async def answer() -> Any:
        # Answer as of the asker's map at least: a split that map implies must be applied
        # first, or we would report an empty child PG that is about to be filled.
        await daemon.wait_for_epoch(epoch)
        await daemon.pool_ready(pool)
        # Writes still queued from an interval in which we were primary count too.
        await daemon.writes.barrier().wait()
        info = daemon.store.pg_info(pool, pg)
        stamps = daemon.store.pg_scrub_stamps(pool, pg)
        return {"v": list(info.last_version), "tail": info.log_tail, "scrub": list(stamps)}

    return answer()


def op_pg_log_since(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    pool, pg = _pool_pg(args)
    if args.get("last") is not None:
        # The newest entries, whatever the tail: a log to adopt with copied state.
        limit = min(int(args["last"]), ADOPT_LOG_ENTRIES)
        return {"entries": [e.to_wire() for e in daemon.store.pg_log_last(pool, pg, limit)]}
    entries = daemon.store.pg_log_since(pool, pg, int(args["seq"]))
    if entries is None:
        return {"entries": None}
    return {"entries": [e.to_wire() for e in entries]}


def op_object_state(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    try:
        return daemon.store.object_state(int(args["pool"]), str(args["name"])).to_wire()
    except ChecksumError as exc:
        raise RemoteError(Code.EIO, f"osd.{daemon.osd_id}: {exc}") from None


def op_list_pg(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    pool, pg = _pool_pg(args)
    cursor = args.get("cursor")
    entries, next_cursor = daemon.store.list_pg(
        pool,
        pg,
        str(cursor) if cursor is not None else None,
        min(int(args.get("limit", 1000)), 10000),
    )
    return {"objects": [[n, s, list(v)] for n, s, v in entries], "next": next_cursor}


def op_push(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    """Install an object's whole state if it is newer than ours — or, for a scrub repair
    (``repair``), as new as ours: our copy of that version is damaged."""
    pool, pg = _pool_pg(args)
    repair = args.get("repair", False)
    authoritative = args.get("authoritative", False)
    if type(repair) is not bool or type(authoritative) is not bool:
        raise RemoteError(Code.EINVAL, "push: repair and authoritative must be booleans")
    if authoritative:
        # A rollback overrides versions: only the PG's current primary may ask it.
        _check_sender_is_primary(daemon, pool, pg, args)
    PEER_TRAFFIC.push_received(args.get("state"))
    daemon.throttle.remote.renew(pool, pg, trio.current_time())
    state = ObjectState.from_wire(args["state"])
    completion = daemon.writes.submit(
        ObjectStateTxn(pool, pg, state, replace_equal=repair, authoritative=authoritative)
    )

    async def done() -> Any:
        result = await completion.wait()
        if result.code != Code.OK:
            raise RemoteError(result.code, result.message)
        return {"installed": result.results == [True]}

    return done()


def op_pg_mark(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    pool, pg = _pool_pg(args)
    try:
        entries = entries_from_wire(args.get("entries", []))
    except InvalidRequest as exc:
        raise RemoteError(Code.EINVAL, f"pg_mark: {exc.message}") from None
    version = parse_version_untrusted(args["v"])
    completion = daemon.writes.submit(PgResetLogTxn(pool, pg, version, entries))
    return _await_ok(completion)


async def _await_ok(completion: Any) -> Any:
    result = await completion.wait()
    if result.code != Code.OK:
        raise RemoteError(result.code, result.message)
    return {}


def op_scrub_map(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    """A page of our scrub map of a PG (see store.osd.scrub), read off the event loop."""
    pool, pg = _pool_pg(args)
    where = parse_scrub_map_args_untrusted(args)

    async def answer() -> Any:
        await daemon.pool_ready(pool)
        page = await read_scrub_page(daemon.store, pool, pg, **where)
        return page.to_wire()

    return answer()


def op_pg_state(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    """How a PG stands here: its state where we are primary, and its acting set."""
    pool, pg = _pool_pg(args)
    pgobj = daemon.pgs.get((pool, pg))
    if pgobj is None:
        return {"state": None, "acting": []}
    return {"state": pgobj.status(), "acting": list(pgobj.acting)}


def _reservation_key(args: dict[str, Any]) -> tuple[int, int, int]:
    pool, pg = _pool_pg(args)
    return pool, pg, int(args["from"])


def op_recovery_reserve(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    """A primary asks for one of our backfill slots (see store.osd.throttle)."""
    granted = daemon.throttle.remote.reserve(_reservation_key(args), trio.current_time())
    return {"granted": granted}


def op_recovery_release(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    daemon.throttle.remote.release(_reservation_key(args))
    return {}


def op_ping(daemon: OsdDaemon, args: dict[str, Any]) -> Any:
    return {"osd_id": daemon.osd_id, "epoch": daemon.map.epoch}


PEER_OPS = {
    "repop": op_repop,
    "pg_info": op_pg_info,
    "pg_log_since": op_pg_log_since,
    "object_state": op_object_state,
    "list_pg": op_list_pg,
    "push": op_push,
    "pg_mark": op_pg_mark,
    "pg_state": op_pg_state,
    "scrub_map": op_scrub_map,
    "ping": op_ping,
    "recovery_reserve": op_recovery_reserve,
    "recovery_release": op_recovery_release,
}
