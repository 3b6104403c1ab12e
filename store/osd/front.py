"""The daemon's UDP front: one socket, one receive loop, every datagram accounted for.

Each datagram is parsed as untrusted bytes. HELLOs open sessions; REQUESTs are opened with
their session's keys, checked against the anti-replay window, and routed: a read is served
at once from the receive loop, a write gets a task that waits for the PG to order,
apply and replicate it. Anything that fails a check is dropped and counted by reason, and
the loop goes on: a daemon never dies of its input. A read that meets a damaged block is
read-repaired: a task replaces our copy from a member holding the same version (see
``PgScrub.read_repair``) and answers from the new copy.

The socket is a plain non-blocking socket driven by ``trio.lowlevel.wait_readable``: reading
until the queue is empty and sending without awaiting keeps per-datagram overhead low.
A reply that does not fit the send buffer is dropped; the client retransmits.

Stage pieces, the data of large writes, are received, acknowledged (together, once per
receive burst) and taken at the commit by ``store.osd.stage_pieces``.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import trio

from store.errors import AuthError, Code, MalformedDatagram, ProtocolError, RemoteError
from store.metrics.osd import FrontStats, data_bytes_of, data_bytes_of_results
from store.osd.blocksums import with_sums
from store.osd.ops import (
    MAX_READ_LENGTH,
    Delete,
    InvalidRequest,
    OmapClear,
    OmapRm,
    Op,
    RmXattr,
    Staged,
    is_mutating,
    parse_cond_untrusted,
    parse_ops_untrusted,
    validate_object_name,
)
from store.osd.sessions import ExpiredSession, Session, SessionTable, UnknownSession, drop_reason
from store.osd.stage_pieces import StagePieces
from store.osd.txns import PrimaryTxn, TxnResult
from store.placement import PoolSpec, pg_of, primary
from store.wire import body as wire_body
from store.wire import fragments as wire_fragments
from store.wire.datagram import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    TAG_SIZE,
    DatagramType,
    Header,
    parse_header_untrusted,
)

if TYPE_CHECKING:
    from store.osd.daemon import OsdDaemon

log = logging.getLogger("store.osd")

# Replies that describe a passing condition; a retry of the same request must run again.
TRANSIENT = {Code.EAGAIN, Code.ESTALE, Code.EDEGRADED, Code.ETIMEDOUT, Code.EBADSESSION}
# A reply a read may ask to get in fragments: its data and a little msgpack around it.
MAX_FRAGMENTED_REPLY = MAX_READ_LENGTH + 4096
MIN_DATAGRAM = 1400
LIST_REPLY_BUDGET = 60000  # bytes of names per listing reply, well inside one datagram
# What a full daemon still accepts: operations that only free space.
FREEING_OPS = (Delete, RmXattr, OmapRm, OmapClear)


def frees_space_only(ops: Sequence[Op]) -> bool:
    return all(isinstance(op, FREEING_OPS) for op in ops if op.MUTATING)


class UdpFront:
    def __init__(self, daemon: OsdDaemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        sock.setblocking(False)
        self.sessions: SessionTable | None = None
        self.dropped: Counter[str] = Counter()
        self.stats = FrontStats()  # plain counters, read at scrape time
        self.stages = StagePieces(self)
        self._nursery: trio.Nursery | None = None
        self._last_refusal_log = -1e9
        self._refusals_unlogged = 0

    async def run(self, sessions: SessionTable) -> None:
        self.sessions = sessions
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                await trio.lowlevel.wait_readable(self.sock)
                for _ in range(256):  # then let other tasks run
                    try:
                        data, address = self.sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    except OSError as exc:  # e.g. ICMP errors surfacing on Linux
                        self.dropped["socket_error"] += 1
                        log.debug("recvfrom: %s", exc)
                        continue
                    self.stats.received += 1
                    self.stats.received_bytes += len(data)
                    try:
                        self.on_datagram(data, address)
                    except Exception:
                        self.dropped["internal_error"] += 1
                        log.exception("handling a datagram from %s failed", address)
                self.stages.send_acks()
                await trio.lowlevel.checkpoint()

    def send(self, data: bytes | bytearray | None, address: Any) -> None:
        if data is None:
            return
        try:
            self.sock.sendto(data, address)
        except (BlockingIOError, OSError):
            self.dropped["send_failed"] += 1
            return
        self.stats.sent += 1
        self.stats.sent_bytes += len(data)

    # --- datagrams ---------------------------------------------------------------------

    def on_datagram(self, data: bytes, address: Any) -> None:
        sessions = self.sessions
        assert sessions is not None
        epoch = self.daemon.map.epoch
        try:
            header = parse_header_untrusted(data)
        except MalformedDatagram:
            self.dropped["malformed"] += 1
            return
        if header.type == DatagramType.HELLO:
            try:
                self.send(sessions.handle_hello_untrusted(data, epoch), address)
                self.stats.sessions_opened += 1
            except AuthError as exc:
                self.dropped["auth_failed"] += 1
                self._warn_refused(address, exc)
                self.send(sessions.hello_refusal(header, epoch, Code.EAUTH, str(exc)), address)
            except ProtocolError:
                self.dropped["malformed"] += 1
            return
        if header.type != DatagramType.REQUEST:
            self.dropped["malformed"] += 1
            return
        if header.fragment:
            self.stages.receive(data, header, address)
            return
        try:
            session, header, body = sessions.open_request_untrusted(data, header)
        except (UnknownSession, ExpiredSession):
            self.dropped["unknown_session"] += 1
            self.send(sessions.reset_for(header, epoch), address)
            return
        except ProtocolError as exc:
            self.dropped[drop_reason(exc)] += 1
            return
        self.on_request(session, header, body, address)

    def _warn_refused(self, address: Any, exc: AuthError) -> None:
        # Every refusal is counted; a flood of them is logged once a second, not per datagram.
        self._refusals_unlogged += 1
        now = trio.current_time()
        if now - self._last_refusal_log >= 1.0:
            more = self._refusals_unlogged - 1
            log.warning(
                "refused a session from %s:%s: %s%s",
                address[0],
                address[1],
                exc,
                f" (and {more} more since the last report)" if more else "",
            )
            self._last_refusal_log, self._refusals_unlogged = now, 0

    def reply(
        self,
        session: Session,
        header: Header,
        address: Any,
        body: dict[str, Any],
        kind: str,
        started: float,
        fragments: tuple[int, int] | None = None,
    ) -> bytes | bytearray | None:
        """Seal and send `body`; returns the datagram (for the reply cache), or None when
        the reply went out in fragments (only reads that asked for it, never cached)."""
        sessions = self.sessions
        assert sessions is not None
        epoch = self.daemon.map.epoch
        datagram: bytes | bytearray | None = None
        head = b""
        tail: wire_fragments.Data = b""
        if fragments is not None and body["r"] == Code.OK:
            # The data goes raw, as the tail of the fragments; the map is packed without it.
            head, tail = wire_fragments.reply_parts(body)
        # Whole when it fits one datagram, which data of a datagram's size never does.
        packed = wire_body.pack(body) if len(tail) < MAX_DATAGRAM else None
        if packed is not None and HEADER_SIZE + len(packed) + TAG_SIZE <= MAX_DATAGRAM:
            datagram = sessions.seal_packed(session, header, epoch, packed)
            self.send(datagram, address)
        elif (
            fragments is not None
            and body["r"] == Code.OK
            and (size := wire_fragments.packed_size(head, tail)) <= fragments[0]
            and wire_fragments.fits(size, fragments[1])
        ):
            version = (int(body["v"][0]), int(body["v"][1]))
            for prefix, piece in wire_fragments.split(head, tail, version, fragments[1]):
                self.send(sessions.seal_fragment(session, header, epoch, prefix, piece), address)
            self.stats.fragmented += 1
        else:
            body = {"r": int(Code.EFBIG), "m": "reply too large to send: ask for less"}
            datagram = sessions.seal_reply(session, header, epoch, body)
            self.send(datagram, address)
        code = body["r"]
        if code == Code.ESTALE:
            # Counted here, once the request proved authentic: a stage piece is checked
            # before its tag (which decides where it is opened), and a forged one is a
            # bad_mac drop only.
            self.dropped["stale_epoch"] += 1
        self.stats.answered(kind, code, time.perf_counter() - started)
        return datagram

    def on_request(
        self, session: Session, header: Header, body: dict[Any, Any], address: Any
    ) -> None:
        started = time.perf_counter()
        kind = "invalid"
        fragments = None
        try:
            if "ls" in body:
                kind = "list"
                answer = self._list(session, header, body)
            else:
                ops = parse_ops_untrusted(body.get("ops"), staged=True)
                kind = "write" if is_mutating(ops) else "read"
                if kind == "read":
                    fragments = parse_fragments_untrusted(body.get("frag"))
                found = self._object_request(
                    session, header, body, address, ops, started, fragments
                )
                if found is None:
                    return  # a write under way, or answered from the reply cache
                answer = found
        except (RemoteError, InvalidRequest) as exc:
            answer = {"r": int(exc.code), "m": exc.message}
        self.reply(session, header, address, answer, kind, started, fragments)

    def _route(
        self, session: Session, header: Header, body: dict[Any, Any], write: bool
    ) -> tuple[PoolSpec, int]:
        pool_id = body.get("p")
        if not isinstance(pool_id, int):
            raise InvalidRequest("request names no pool")
        return self.pool_of(session, header, pool_id, write), pool_id

    def pool_of(self, session: Session, header: Header, pool_id: int, write: bool) -> PoolSpec:
        """The pool a request names, if the session may read it (or write to it)."""
        daemon = self.daemon
        pool = daemon.map.pools.get(pool_id)
        if pool is None:
            if header.epoch > daemon.map.epoch:
                raise RemoteError(Code.EAGAIN, "this daemon has not seen your map yet")
            raise RemoteError(Code.ENOENT, f"no pool with id {pool_id}")
        if not session.caps.allows(pool.name, write):
            raise RemoteError(
                Code.EPERM,
                f"client {session.client!r} may not {'write to' if write else 'read'} pool {pool.name!r}",
            )
        if pool.encrypt and not header.encrypted:
            raise RemoteError(Code.EPERM, f"pool {pool.name!r} requires encrypted requests")
        return pool

    def primary_pg(self, pool_id: int, pg: int, header: Header) -> Any:
        daemon = self.daemon
        if primary(daemon.map, pool_id, pg) != daemon.osd_id:
            if header.epoch > daemon.map.epoch:
                raise RemoteError(Code.EAGAIN, "this daemon has not seen your map yet")
            # Not served: the client routed by an old map (it is told so, and refreshes;
            # counted as a stale_epoch drop once the answer goes out, see `reply`).
            raise RemoteError(
                Code.ESTALE, f"osd.{daemon.osd_id} is not the primary of pg {pool_id}.{pg:x}"
            )
        pgobj = daemon.pgs.get((pool_id, pg))
        if pgobj is None or pgobj.state != "active":
            raise RemoteError(Code.EAGAIN, f"pg {pool_id}.{pg:x} is not active yet")
        return pgobj

    def _list(self, session: Session, header: Header, body: dict[Any, Any]) -> dict[str, Any]:
        pool, pool_id = self._route(session, header, body, write=False)
        pg, spec = body.get("pg"), body.get("ls")
        if not isinstance(pg, int) or not 0 <= pg < pool.pg_num or not isinstance(spec, dict):
            raise InvalidRequest("a listing needs pg and ls: {c: cursor, n: limit}")
        cursor, limit = spec.get("c"), spec.get("n", 200)
        if (cursor is not None and not isinstance(cursor, str)) or not isinstance(limit, int):
            raise InvalidRequest("bad listing cursor or limit")
        self.primary_pg(pool_id, pg, header)
        entries, next_cursor = self.daemon.store.list_pg(
            pool_id, pg, cursor, max(1, min(limit, 1000))
        )
        budget, kept = LIST_REPLY_BUDGET, cast(list[list[Any]], [])
        for name, size, version in entries:
            budget -= len(name.encode()) + 32
            if budget < 0:
                next_cursor = str(kept[-1][0]) if kept else cursor
                break
            kept.append([name, size, list(version)])
        return {"r": 0, "objs": kept, "next": next_cursor}

    def _object_request(
        self,
        session: Session,
        header: Header,
        body: dict[Any, Any],
        address: Any,
        ops: list[Op],
        started: float,
        fragments: tuple[int, int] | None = None,
    ) -> dict[str, Any] | None:
        """The answer to a read; None for a write (answered when it is done)."""
        raw_ops = body.get("ops")
        assert isinstance(raw_ops, list)  # parse_ops_untrusted accepted it
        write = is_mutating(ops)
        pool, pool_id = self._route(session, header, body, write)
        name = validate_object_name(body.get("o"))
        cond = parse_cond_untrusted(body.get("if"))
        pg = pg_of(pool, name)
        pgobj = self.primary_pg(pool_id, pg, header)
        if not write:
            # The data may be a view of the loop's read buffer: it is sealed and sent
            # before this thread reads again.
            result = self.daemon.store.execute_read(pool_id, name, ops, borrow=True)
            if result.damaged:
                # Our copy failed its checksum: answer once a good copy has replaced it.
                assert self._nursery is not None
                self._nursery.start_soon(
                    self._read_repaired,
                    session,
                    header,
                    address,
                    pgobj,
                    name,
                    ops,
                    result,
                    started,
                    fragments,
                )
                return None
            if result.code == Code.OK:
                self.stats.data_bytes["read"] += data_bytes_of_results(result.results)
            return _result_body(result)
        cached = session.replies.get(header.request_id)
        if cached is not None:
            self.send(cached, address)
            self.stats.repeats["answered_again"] += 1
            return None
        if header.request_id in session.in_progress:
            # Tell the client we have it, so it waits instead of sending it again.
            return {"r": int(Code.INPROGRESS)}
        daemon = self.daemon
        if daemon.full or daemon.full_osds:
            why = daemon.full_reason(pgobj.acting)
            if why is not None and not frees_space_only(ops):
                raise RemoteError(Code.ENOSPC, why)
        tokens: list[int] = []
        if any(isinstance(op, Staged) for op in ops):
            ops, raw_ops, tokens = self.stages.unstage(session, pool_id, pg, ops)
        ops = with_sums(ops, daemon.store.block_size)  # hashed once, here, for every copy
        session.in_progress.add(header.request_id)
        txn = PrimaryTxn(
            pool=pool_id,
            pg=pg,
            name=name,
            ops=ops,
            cond=cond,
            epoch=self.daemon.map.epoch,
            reqid=f"{session.client}.{session.instance:x}:{header.request_id}",
        )
        assert self._nursery is not None
        self._nursery.start_soon(
            self._write,
            session,
            header,
            address,
            pgobj,
            txn,
            raw_ops,
            pool.min_size,
            started,
            tokens,
        )
        return None

    async def _read_repaired(
        self,
        session: Session,
        header: Header,
        address: Any,
        pgobj: Any,
        name: str,
        ops: list[Op],
        result: TxnResult,
        started: float,
        fragments: tuple[int, int] | None,
    ) -> None:
        """Read repair: replace our damaged copy from a member holding the same version,
        then answer the read from it; EIO, as before, when no good copy is found."""
        try:
            if await pgobj.scrubber.read_repair(name, result.version):
                result = self.daemon.store.execute_read(pgobj.pool_id, name, ops)
        except Exception:
            log.exception("read repair of %r in pg %s failed", name, pgobj.name)
        if result.code == Code.OK:
            self.stats.data_bytes["read"] += data_bytes_of_results(result.results)
        self.reply(session, header, address, _result_body(result), "read", started, fragments)

    async def _write(
        self,
        session: Session,
        header: Header,
        address: Any,
        pgobj: Any,
        txn: PrimaryTxn,
        raw_ops: list[Any],
        min_size: int,
        started: float,
        tokens: list[int],
    ) -> None:
        body: dict[str, Any] = {"r": int(Code.ETIMEDOUT), "m": "write abandoned"}
        try:
            result = await pgobj.client_write(txn, raw_ops, min_size)
            body = _result_body(result)
            if result.code == Code.OK:
                self.stats.data_bytes["written"] += data_bytes_of(txn.ops)
        except RemoteError as exc:
            body = {"r": int(exc.code), "m": exc.message}
        finally:
            session.in_progress.discard(header.request_id)
            # A decided write drops its stages; one to be retried keeps them.
            self.stages.release(session, tokens, done=body["r"] not in TRANSIENT)
        datagram = self.reply(session, header, address, body, "write", started)
        if datagram is not None and body["r"] not in TRANSIENT:
            session.remember_reply(header.request_id, datagram)


def parse_fragments_untrusted(raw: object) -> tuple[int, int] | None:
    """A read's ``"frag": [most reply bytes, datagram size]`` (see store.wire.fragments)."""
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or len(raw) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in raw)
    ):
        raise InvalidRequest("frag must be [most reply bytes, datagram size]")
    limit, datagram = raw
    if not 0 < limit <= MAX_FRAGMENTED_REPLY:
        raise InvalidRequest(f"frag asks for 1 to {MAX_FRAGMENTED_REPLY} bytes, not {limit}")
    if not MIN_DATAGRAM <= datagram <= MAX_DATAGRAM:
        raise InvalidRequest(f"frag datagram size must be {MIN_DATAGRAM} to {MAX_DATAGRAM}")
    return limit, datagram


def _result_body(result: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"r": int(result.code), "v": list(result.version)}
    if result.code == Code.OK:
        body["res"] = result.results
    elif result.message:
        body["m"] = result.message
    return body
