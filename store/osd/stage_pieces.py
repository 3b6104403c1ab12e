"""The UDP front's share of staged writes: pieces received, acknowledged, taken at the commit.

A stage piece (``store.wire.stages``) is checked like a write (the client's capabilities,
this daemon the PG's primary, room on the acting set's disks) before anything is held for
it, then opened straight into its place in the stage (``store.osd.staging``). The pieces
one session had held among the datagrams of one receive burst are acknowledged together
when the burst is done (``send_acks``); a piece refused is answered at once. A request
whose ``staged`` operations name complete stages takes their buffers as the data of
ordinary writes (``unstage``), and lets them go once the write is decided (``release``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from store.errors import Code, ProtocolError, RemoteError
from store.malloc import uninitialized
from store.osd.ops import InvalidRequest, Op, Staged, Write, WriteFull
from store.osd.sessions import ExpiredSession, Session, UnknownSession, drop_reason
from store.osd.staging import NotStaged, StagingArea, StagingFull
from store.wire import stages as wire_stages
from store.wire.datagram import MAX_DATAGRAM, Header

if TYPE_CHECKING:
    from store.osd.front import UdpFront


@dataclass(slots=True)
class _Acks:
    """Stage pieces of one session held in the current burst, to acknowledge together."""

    session: Session
    header: Header  # the latest piece's: its request id and flags seal the answer
    address: Any
    request_ids: list[int]


class StagePieces:
    def __init__(self, front: UdpFront) -> None:
        self.front = front
        self.area = StagingArea(time.monotonic)
        self._aside = memoryview(uninitialized(MAX_DATAGRAM))  # pieces only checked
        self._acks: dict[int, _Acks] = {}  # session id -> pieces held, not yet acknowledged

    def receive(self, data: bytes, header: Header, address: Any) -> None:
        """One piece of a large write, opened straight into its place in the stage, held
        until a ``staged`` operation commits it."""
        started = time.perf_counter()
        front = self.front
        sessions = front.sessions
        assert sessions is not None
        try:
            session = sessions.session_of(header)
            piece = wire_stages.parse_untrusted(data)
        except UnknownSession:
            front.dropped["unknown_session"] += 1
            front.send(sessions.reset_for(header, front.daemon.map.epoch), address)
            return
        except ProtocolError:
            front.dropped["malformed"] += 1
            return
        owner = (session.client, session.instance)
        target, created = None, False
        answer: dict[str, Any] = {"r": 0}
        try:
            self._check(session, header, piece.pool, piece.pg)
            target, created = self.area.target(
                owner, piece.token, piece.pool, piece.pg, piece.offset, piece.length, piece.size
            )
        except (RemoteError, InvalidRequest) as exc:
            answer = {"r": int(exc.code), "m": exc.message}
        except StagingFull as exc:
            answer = {"r": int(Code.EAGAIN), "m": f"staging area full: {exc}"}
        try:
            # A piece held already, or one to refuse, is opened aside: only to check it.
            out = target if target is not None else self._aside[: piece.length]
            sessions.open_piece_into(session, data, header, out)
        except ProtocolError as exc:
            if created:
                self.area.forget(owner, piece.token)
            front.dropped[drop_reason(exc)] += 1
            if isinstance(exc, ExpiredSession):
                front.send(sessions.reset_for(header, front.daemon.map.epoch), address)
            return
        if target is not None:
            self.area.fill(owner, piece.token, piece.offset, piece.length)
            front.stats.data_bytes["staged"] += piece.length
        if answer["r"] != Code.OK:
            front.reply(session, header, address, answer, "stage", started)
            return
        # Held (now or before): acknowledged with the burst's others (send_acks).
        front.stats.answered("stage", Code.OK, time.perf_counter() - started)
        held = self._acks.get(session.session_id)
        if held is None:
            self._acks[session.session_id] = _Acks(session, header, address, [header.request_id])
        else:
            held.header, held.address = header, address
            held.request_ids.append(header.request_id)

    def send_acks(self) -> None:
        """Acknowledge the pieces held since the last call, one REPLY per session."""
        if not self._acks:
            return
        front = self.front
        sessions = front.sessions
        assert sessions is not None
        acks, self._acks = self._acks, {}
        epoch = front.daemon.map.epoch
        for held in acks.values():
            body = wire_stages.acknowledgement(held.request_ids)
            front.send(sessions.seal_reply(held.session, held.header, epoch, body), held.address)

    def _check(self, session: Session, header: Header, pool_id: int, pg: int) -> None:
        """Whether this daemon takes a stage piece of this PG from this session."""
        front = self.front
        pool = front.pool_of(session, header, pool_id, write=True)
        if pg >= pool.pg_num:
            raise InvalidRequest(f"pool {pool.name!r} has no pg {pg:x}")
        pgobj = front.primary_pg(pool_id, pg, header)
        daemon = front.daemon
        if daemon.full or daemon.full_osds:
            why = daemon.full_reason(pgobj.acting)
            if why is not None:
                raise RemoteError(Code.ENOSPC, why)

    def unstage(
        self, session: Session, pool_id: int, pg: int, ops: list[Op]
    ) -> tuple[list[Op], list[Any], list[int]]:
        """Replace ``staged`` operations by writes of the staged bytes: the operations,
        their wire form (forwarded to the replicas) and the stage tokens taken. A stage
        not found stays a ``staged`` operation: the object store answers ENOTSTAGED, unless
        the PG log shows that this very request was applied already (a retransmission
        whose stage was dropped when it succeeded)."""
        owner = (session.client, session.instance)
        resolved: list[Op] = []
        tokens: list[int] = []
        try:
            for op in ops:
                if isinstance(op, Staged):
                    try:
                        data = self.area.take(owner, op.token, pool_id, pg, op.length)
                    except NotStaged:
                        resolved.append(op)
                        continue
                    tokens.append(op.token)
                    resolved.append(WriteFull(data) if op.full else Write(op.offset, data))
                else:
                    resolved.append(op)
        except InvalidRequest:
            self.release(session, tokens, done=False)
            raise
        return resolved, [op.to_wire() for op in resolved], tokens

    def release(self, session: Session, tokens: list[int], *, done: bool) -> None:
        for token in tokens:
            self.area.release((session.client, session.instance), token, done=done)
