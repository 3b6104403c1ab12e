"""The client's UDP transport: sessions with daemons, retransmission, flow control.

Theory of operation
-------------------
One UDP socket serves all daemons (``store.client.udp``). Per daemon the client keeps a
``DaemonLink`` (``store.client.links``): the session (opened by a HELLO carrying the
ticket), a round-trip estimator and a window that bounds the requests in flight to that
daemon.

A request is one datagram and its reply one datagram, except that the pieces of a staged
write go out in bursts (``send_pieces``: one task sends them as the window allows and
collects their answers together, several of which may come in one reply) and a read may
ask for a reply of up to N bytes in fragments (``store.wire.fragments``): the fragments of
one reply are collected by version, and once some came in the client waits only while more
keep coming before it asks again. A resend makes the daemon serve the read again;
fragments already held are kept. The sender waits for the reply for one
retransmission timeout (RTO), then sends the request again under a new sequence number (the
anti-replay window would drop the old one) and the same request id, doubling the RTO each
time (Karn: only first transmissions feed the estimator). The daemon recognises a repeated
request id: a finished write is answered from its reply cache, one in progress is ignored,
a read is simply served again. When the overall deadline passes the request fails with
``ClientTimeout``: a client never hangs.

If the daemon answers RESET (it restarted, or the session expired) the link forgets the
session, says hello again with the current ticket and resends. Each client instance has a
random id, sent in the HELLO, so that request ids stay unique across sessions; the daemon
logs ``client.instance:request`` with every write, which lets a new primary recognise a
write it has already applied.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from store import auth
from store.client.links import ClientSession, DaemonLink, PiecesWaiter, RttEstimator, Waiter
from store.client.udp import Address, DatagramSocket
from store.errors import (
    AuthError,
    BadMAC,
    ClientTimeout,
    Code,
    MalformedDatagram,
    ProtocolError,
    RemoteError,
    StoreError,
    code_of,
)
from store.metrics.stats import LatencyHistogram
from store.wire import body as wire_body
from store.wire import stages as wire_stages
from store.wire.datagram import (
    MAX_DATAGRAM,
    DatagramCipher,
    DatagramType,
    Header,
    derive_datagram_keys,
    encode_unsealed,
    open_unsealed_untrusted,
    parse_header_untrusted,
)
from store.wire.fragments import Reassembly, piece_size
from store.wire.fragments import parse_untrusted as parse_fragment_untrusted
from store.wire.stages import StagePiece

log = logging.getLogger("store.client")

# Sends in a row to one daemon that meet no answer at all before the session is given up
# and a new one begun (each waits one retransmission timeout, with backoff).
REHELLO_AFTER = 6
# The shortest wait for more fragments of a reply once some came in.
QUIET_MIN = 0.002


@dataclass
class TransportStats:
    """Plain counters (read by ``store.metrics.client`` at scrape time)."""

    requests: int = 0
    retransmits: int = 0
    timeouts: int = 0
    dropped: int = 0
    resets: int = 0
    rehellos: int = 0  # new sessions begun after a run of unanswered sends
    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    dropped_by: Counter[str] = field(default_factory=Counter)  # reason -> datagrams
    replies: Counter[int] = field(default_factory=Counter)  # result code -> replies
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class Transport:
    def __init__(
        self,
        sock: DatagramSocket,
        credentials: Callable[[], tuple[bytes, bytes]],
        epoch: Callable[[], int],
        *,
        window: int = 64,
        clock: Callable[[], float] = time.time,
        max_datagram: int = MAX_DATAGRAM,
    ) -> None:
        self.sock = sock
        self._credentials = credentials  # () -> (ticket, session_key), always fresh
        self._epoch = epoch
        self._window = window
        self._clock = clock
        self.max_datagram = max_datagram  # the largest datagram daemons may send us
        self.instance = int.from_bytes(os.urandom(8), "big")
        self.links: dict[tuple[int, Address], DaemonLink] = {}
        self._by_session: dict[int, DaemonLink] = {}
        self._waiters: dict[tuple[int, int], Waiter | PiecesWaiter] = {}
        self._next_request = 0
        self.stats = TransportStats()

    def _link(self, osd_id: int, address: Address) -> DaemonLink:
        key = (osd_id, address)
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = DaemonLink(osd_id, address, trio.Semaphore(self._window))
        return link

    async def run(self) -> None:
        """Receive loop; run it in a nursery for the life of the transport."""
        while True:
            for data in await self.sock.recv_many(65535):
                self.stats.datagrams_received += 1
                self.stats.bytes_received += len(data)
                try:
                    self._on_datagram(data)
                except (ProtocolError, AuthError) as exc:
                    self.stats.dropped += 1
                    self.stats.dropped_by[_drop_reason(exc)] += 1
                    log.debug("dropped a datagram: %s", exc)

    def _on_datagram(self, data: bytes) -> None:
        header = parse_header_untrusted(data)
        if header.type == DatagramType.RESET:
            # Unauthenticated by nature; the worst a forger can do is make us say hello
            # again. Handled before the session lookup: requests still retrying on a session
            # that an earlier RESET made us forget must hear about it too.
            waiter = self._waiters.get((header.session_id, header.request_id))
            if isinstance(waiter, Waiter):
                waiter.reset = True
            if waiter is not None:
                # A burst of pieces sees the session change on its link and starts anew.
                waiter.event.set()
            stale = self._by_session.get(header.session_id)
            if (
                stale is not None
                and stale.session is not None
                and stale.session.session_id == header.session_id
            ):
                self.stats.resets += 1
                self._forget_session(stale)
            return
        link = self._by_session.get(header.session_id)
        if link is None:
            raise ProtocolError("datagram for an unknown session")
        if header.type == DatagramType.HELLO_REPLY:
            waiter = link.hello_waiter
            if waiter is not None and not waiter.event.is_set():
                _, raw = open_unsealed_untrusted(data)
                waiter.reply, waiter.epoch = wire_body.unpack_untrusted(raw), header.epoch
                waiter.event.set()
            return
        if header.type != DatagramType.REPLY or link.session is None:
            raise ProtocolError(f"unexpected {header.type.name}")
        if header.fragment:
            self._on_fragment(link.session, header, data)
            return
        header, raw = link.session.cipher.open_untrusted(data, header)
        waiter = self._waiters.get((header.session_id, header.request_id))
        if waiter is None or isinstance(waiter, PiecesWaiter):
            # Perhaps stage pieces acknowledged together, this one answered already.
            self._on_pieces_answer(header, wire_body.unpack_untrusted(raw))
            return
        if waiter.event.is_set():
            return  # a duplicate, or the answer to a request we gave up on
        waiter.reply, waiter.epoch = wire_body.unpack_untrusted(raw), header.epoch
        waiter.event.set()

    def _on_pieces_answer(self, header: Header, reply: dict[Any, Any]) -> None:
        """The answer to a stage piece, or to several held together: ``{"r": 0, "ack":
        [request ids]}`` (``store.wire.stages``). Ids no longer awaited are ignored."""
        code = reply.get("r")
        for request_id in wire_stages.acknowledged(reply, header.request_id):
            key = (header.session_id, request_id)
            waiter = self._waiters.get(key) if isinstance(request_id, int) else None
            if isinstance(waiter, PiecesWaiter):
                del self._waiters[key]
                self.stats.replies[code if isinstance(code, int) else -1] += 1
                waiter.answered(request_id, reply, header.epoch)

    def _on_fragment(self, session: ClientSession, header: Header, data: bytes) -> None:
        """One piece of a fragmented reply, opened straight into its place in the reply
        (``store.wire.fragments``). `header` is not authenticated yet."""
        waiter = self._waiters.get((header.session_id, header.request_id))
        if waiter is None or waiter.event.is_set():
            return  # a duplicate, or the answer to a request we gave up on
        if isinstance(waiter, PiecesWaiter) or waiter.assembly is None:
            raise ProtocolError("a fragment answering a request that asked for none")
        fragment = parse_fragment_untrusted(data)
        target = waiter.assembly.target(fragment)
        if target is None:
            return  # a piece already held: nothing to open
        with target:
            header = session.cipher.open_fragment_into(data, target, header)
            reply = waiter.assembly.add(fragment, target)
        waiter.progress += 1
        if reply is not None:
            waiter.reply, waiter.epoch = reply, header.epoch
            waiter.event.set()

    def _forget_session(self, link: DaemonLink) -> None:
        if link.session is not None:
            self._by_session.pop(link.session.session_id, None)
            link.session = None

    async def _hello(
        self, link: DaemonLink, deadline: float, give_up: GiveUp | None = None
    ) -> ClientSession:
        async with link.hello_lock:
            if link.session is not None:
                return link.session
            ticket, session_key = self._credentials()
            session_id = int.from_bytes(os.urandom(8), "big") | 1
            nonce = os.urandom(16)
            ts = self._clock()
            datagram = encode_unsealed(
                DatagramType.HELLO,
                session_id,
                0,
                self._epoch(),
                wire_body.pack(
                    {
                        "ticket": ticket,
                        "cn": nonce,
                        "ts": ts,
                        "inst": self.instance,
                        "mac": auth.hello_mac(
                            session_key, session_id, nonce, ts, link.osd_id, self.instance
                        ),
                    }
                ),
            )
            waiter = Waiter()
            link.hello_waiter = waiter
            self._by_session[session_id] = link
            try:
                reply = await self._exchange(
                    link, waiter, lambda: datagram, deadline, give_up=give_up
                )
            except BaseException:
                self._by_session.pop(session_id, None)
                raise
            finally:
                link.hello_waiter = None
            code = reply.get("r")
            if code != Code.OK:
                self._by_session.pop(session_id, None)
                raise RemoteError(
                    code_of(code, Code.EAUTH),
                    f"osd.{link.osd_id} refused the session: {reply.get('m', '')}",
                )
            server_nonce, mac = reply.get("sn"), reply.get("mac")
            if not (isinstance(server_nonce, bytes) and isinstance(mac, bytes)) or not (
                auth.verify_hello_reply_mac(
                    session_key, session_id, nonce, server_nonce, link.osd_id, mac
                )
            ):
                self._by_session.pop(session_id, None)
                raise AuthError(
                    f"osd.{link.osd_id} at {link.address} could not prove it opened our ticket"
                )
            keys = derive_datagram_keys(session_key, nonce, server_nonce, link.osd_id)
            link.session = ClientSession(session_id, DatagramCipher(keys, "client"))
            return link.session

    async def _exchange(
        self,
        link: DaemonLink,
        waiter: Waiter,
        make: Callable[[], bytes | bytearray],
        deadline: float,
        session: ClientSession | None = None,
        give_up: GiveUp | None = None,
        rtt: RttEstimator | None = None,
    ) -> dict[Any, Any]:
        """Send, wait one RTO (of `rtt`, the link's own by default), resend with backoff
        until answered or the deadline passes.

        An INPROGRESS answer means the daemon has the request and is working on it: the
        next RTO passes without a resend. A wait in which fragments of the reply came in is
        followed by short quiet waits (a quarter RTO) for as long as more keep coming, then
        the request is sent again for the pieces lost on the way. Only unambiguous round
        trips feed the RTT estimator (Karn's rule): a first transmission answered directly,
        or a request the daemon said it was working on, timed from its first send.
        """
        first, send = True, True
        sent = started = trio.current_time()
        acknowledged = False  # the daemon said INPROGRESS: our first send reached it
        progress = 0  # fragments seen when the last wait began
        quiet = False  # the last wait saw fragments come in: wait only briefly now
        rtt = rtt if rtt is not None else link.rtt
        while True:
            if send:
                sent = trio.current_time()
                datagram = make()
                self.stats.datagrams_sent += 1
                self.stats.bytes_sent += len(datagram)
                await self.sock.sendto(datagram, link.address)
            wait = rtt.rto()
            if quiet:
                wait = max(QUIET_MIN, wait / 4)
            with trio.move_on_at(min(deadline, trio.current_time() + wait)):
                await waiter.event.wait()
            if waiter.reset:
                raise _SessionReset()
            if waiter.reply is not None:
                link.unanswered = 0
                if waiter.reply.get("r") == Code.INPROGRESS:
                    waiter.reply, waiter.event = None, trio.Event()
                    first, send, acknowledged = False, False, True
                    continue
                if first:
                    rtt.sample(trio.current_time() - sent)
                elif acknowledged:
                    # Not ambiguous as Karn fears: the work began with the first send, so
                    # the time since then is how long this daemon takes to answer now.
                    rtt.sample(trio.current_time() - started)
                return waiter.reply
            quiet = waiter.progress != progress
            if quiet and trio.current_time() < deadline:
                progress, send, link.unanswered = waiter.progress, False, 0
                continue
            if give_up is not None and (reason := give_up()) is not None:
                raise TargetMoved(f"osd.{link.osd_id} did not answer; {reason}")
            if trio.current_time() >= deadline:
                self.stats.timeouts += 1
                raise ClientTimeout(
                    f"osd.{link.osd_id} at {link.address[0]}:{link.address[1]} did not answer in time"
                )
            first, send = False, True
            self.stats.retransmits += 1
            rtt.timed_out()
            if session is not None:
                if link.session is not session:
                    raise _SessionReset()  # another request already started a new session
                link.unanswered += 1
                if link.unanswered >= REHELLO_AFTER:
                    # Not a word back for many sends: the daemon may have lost our session
                    # without a RESET reaching us (restarted, and our session id now names
                    # another client's session), so it drops everything we send. Start a
                    # new session; the request keeps its id, so a write it already applied
                    # is recognised.
                    self._forget_session(link)
                    link.unanswered = 0
                    self.stats.rehellos += 1
                    raise _SessionReset()

    async def send_pieces(
        self,
        osd_id: int,
        address: Address,
        pieces: Sequence[StagePiece],
        *,
        encrypt: bool,
        deadline: float,
        give_up: GiveUp | None = None,
    ) -> tuple[dict[Any, Any], int, list[int]]:
        """Send the pieces of a stage (``store.wire.stages``); returns (the first answer
        that is not OK, or OK, the daemon's epoch, the indexes of the pieces not held).

        Each piece is a request of its own (the daemon acknowledges the pieces it held
        together, one reply naming several ids), but the pieces are sent from this one
        task as fast as the link's window lets them, and their answers are collected
        together: a piece unanswered for one RTO is sent again (under a new
        sequence number and request id: a piece is the same wherever it lands twice). A
        run of RTOs without any answer, a RESET, or `give_up` end as for ``request``.
        """
        link = self._link(osd_id, address)
        todo = deque(range(len(pieces)))
        tried: set[int] = set()
        batch = PiecesWaiter(link.window)
        session: ClientSession | None = None
        self.stats.requests += len(pieces)
        try:
            while True:
                if session is None or link.session is not session:
                    if session is not None:
                        # A new session: what was in flight on the old one goes again.
                        todo.extendleft(self._drop_in_flight(batch, session))
                    session = link.session or await self._hello(link, deadline, give_up)
                while todo and batch.problem is None:
                    try:
                        link.window.acquire_nowait()
                    except trio.WouldBlock:
                        break
                    index = todo.popleft()
                    request_id = self.new_request_id()
                    self._waiters[(session.session_id, request_id)] = batch
                    batch.in_flight[request_id] = (index, trio.current_time(), index not in tried)
                    tried.add(index)
                    piece = pieces[index]
                    datagram = session.cipher.seal_fragment(
                        session.session_id,
                        session.next_seq(),
                        request_id,
                        self._epoch(),
                        piece.prefix,
                        piece.data,
                        encrypt,
                    )
                    self.stats.datagrams_sent += 1
                    self.stats.bytes_sent += len(datagram)
                    await self.sock.sendto(datagram, link.address)
                if batch.problem is not None:
                    reply, epoch = batch.problem
                    return reply, epoch, [i for i in range(len(pieces)) if i not in batch.acked]
                if not todo and not batch.in_flight:
                    return {"r": int(Code.OK)}, 0, []
                if not batch.in_flight:
                    # Others' requests hold the whole window: wait for a permit.
                    with trio.move_on_at(deadline):
                        await link.window.acquire()
                        link.window.release()
                        continue
                else:
                    oldest = min(sent for _, sent, _ in batch.in_flight.values())
                    with trio.move_on_at(min(deadline, oldest + link.rtt.rto())):
                        await batch.event.wait()
                    batch.event = trio.Event()
                heard, batch.heard = batch.heard, False
                if heard:
                    link.unanswered = 0
                for rtt in batch.answers:
                    link.rtt.sample(rtt)
                    self.stats.latency.observe(rtt)
                batch.answers.clear()
                now, rto = trio.current_time(), link.rtt.rto()
                # As the wait's end was reckoned (sent + rto), or it could come out not late.
                late = [
                    request_id
                    for request_id, (_, sent, _) in batch.in_flight.items()
                    if sent + rto <= now
                ]
                if not late and now < deadline:
                    continue
                if give_up is not None and (reason := give_up()) is not None:
                    raise TargetMoved(f"osd.{link.osd_id} did not answer; {reason}")
                if now >= deadline:
                    self.stats.timeouts += 1
                    raise ClientTimeout(
                        f"osd.{link.osd_id} at {link.address[0]}:{link.address[1]} did not answer in time"
                    )
                self.stats.retransmits += len(late)
                link.rtt.timed_out()
                for request_id in late:
                    index, _, _ = batch.in_flight.pop(request_id)
                    self._waiters.pop((session.session_id, request_id), None)
                    link.window.release()
                    todo.append(index)
                if not heard:
                    # Not one answer in a whole RTO: perhaps the session is gone unsaid.
                    link.unanswered += 1
                    if link.unanswered >= REHELLO_AFTER:
                        self._forget_session(link)
                        link.unanswered = 0
                        self.stats.rehellos += 1
        finally:
            if session is not None:
                self._drop_in_flight(batch, session)

    def _drop_in_flight(self, batch: PiecesWaiter, session: ClientSession) -> list[int]:
        """Stop waiting for the answers to the pieces in flight; returns those pieces."""
        pieces = []
        for request_id, (index, _, _) in batch.in_flight.items():
            self._waiters.pop((session.session_id, request_id), None)
            batch.window.release()
            pieces.append(index)
        batch.in_flight.clear()
        return pieces

    def new_request_id(self) -> int:
        self._next_request += 1
        return self._next_request

    async def request(
        self,
        osd_id: int,
        address: Address,
        body: dict[str, Any],
        *,
        encrypt: bool,
        deadline: float,
        request_id: int | None = None,
        give_up: GiveUp | None = None,
        fragments: int = 0,
        slow: bool = False,
    ) -> tuple[dict[Any, Any], int]:
        """Send one request to a daemon; returns (reply body, daemon's epoch).

        `slow` requests (work that grows with the data, such as committing a staged
        extent) have a retransmission timeout of their own.

        With `fragments`, the request (a read) takes a reply of up to that many bytes in
        several datagrams (see ``store.wire.fragments``); mind the receive buffer.

        Pass the same `request_id` when retrying one logical request after a transient
        error answer, so that the daemon recognises a write it already applied. `give_up`
        is asked after every unanswered wait: a reason it returns (the map names another
        daemon now) ends the request with `TargetMoved`.
        """
        link = self._link(osd_id, address)
        if request_id is None:
            request_id = self.new_request_id()
        self.stats.requests += 1
        started = trio.current_time()
        if fragments:
            body = {**body, "frag": [fragments, self.max_datagram]}
        packed = wire_body.pack(body)
        # One reassembly for every session the request goes through: pieces are joined
        # by version, so pieces that came in on a session since lost still count.
        assembly = Reassembly(fragments, piece_size(self.max_datagram)) if fragments else None
        async with link.window:
            while True:
                session = link.session or await self._hello(link, deadline, give_up)
                waiter = Waiter(assembly=assembly)
                key = (session.session_id, request_id)
                self._waiters[key] = waiter

                def make(session: ClientSession = session) -> bytes | bytearray:
                    return session.cipher.seal(
                        DatagramType.REQUEST,
                        session.session_id,
                        session.next_seq(),
                        request_id,
                        self._epoch(),
                        packed,
                        encrypt,
                    )

                try:
                    reply = await self._exchange(
                        link,
                        waiter,
                        make,
                        deadline,
                        session,
                        give_up,
                        link.slow_rtt if slow else link.rtt,
                    )
                    self.stats.latency.observe(trio.current_time() - started)
                    code = reply.get("r")
                    self.stats.replies[code if isinstance(code, int) else -1] += 1
                    return reply, waiter.epoch
                except _SessionReset:
                    continue
                finally:
                    self._waiters.pop(key, None)


class _SessionReset(Exception):
    pass


class TargetMoved(StoreError):
    """The request was abandoned: the map names another daemon for it now."""


GiveUp = Callable[[], "str | None"]


def _drop_reason(exc: Exception) -> str:
    if isinstance(exc, BadMAC):
        return "bad_mac"
    if isinstance(exc, MalformedDatagram):
        return "malformed"
    if isinstance(exc, AuthError):
        return "auth_failed"
    return "unexpected"  # a reply for a session or request we do not know
