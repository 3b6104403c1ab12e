"""The client's UDP transport: sessions with daemons, retransmission, flow control.

Theory of operation
-------------------
One UDP socket serves all daemons. Per daemon the client keeps a ``DaemonLink``: the
session (opened by a HELLO carrying the ticket), a round-trip estimator and a window that
bounds the requests in flight to that daemon.

A request is one datagram and its reply one datagram, except that the pieces of a staged
write go out in bursts (``send_pieces``: one task sends them as the window allows and
collects their answers together) and a read may ask for a reply of up to N bytes in
fragments (``store.wire.fragments``): the fragments of one
reply are collected by version, and once some came in the client waits only while more
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
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from store import auth
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

Address = tuple[str, int]
# Sends in a row to one daemon that meet no answer at all before the session is given up
# and a new one begun (each waits one retransmission timeout, with backoff).
REHELLO_AFTER = 6


class DatagramSocket(Protocol):
    async def sendto(self, data: bytes | bytearray, address: Address) -> Any: ...
    async def recv_many(self, size: int) -> list[bytes]:
        """The datagrams waiting (at least one), without their addresses."""
        ...

    def close(self) -> None: ...


# The shortest wait for more fragments of a reply once some came in.
QUIET_MIN = 0.002
RECEIVE_BURST = 128  # datagrams taken per wakeup before other tasks run


class UdpSocket:
    """A UDP socket for trio that sends without a trip through the scheduler when the
    kernel takes the datagram at once (it nearly always does), and takes every datagram
    waiting per wakeup: a 4 MiB transfer is some 70 datagrams each way, and trio's socket
    methods yield twice for each."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def sendto(self, data: bytes | bytearray, address: Address) -> int:
        while True:
            try:
                return self.sock.sendto(data, address)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def recv_many(self, size: int) -> list[bytes]:
        received: list[bytes] = []
        while True:
            try:
                while len(received) < RECEIVE_BURST:
                    received.append(self.sock.recv(size))
            except BlockingIOError:
                pass
            if received:
                return received
            await trio.lowlevel.wait_readable(self.sock)

    def receive_buffer(self) -> int:
        """Bytes of datagrams the kernel holds for us before it drops (it reports twice
        that, counting its own overhead)."""
        return int(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)) // 2

    def close(self) -> None:
        self.sock.close()


def open_udp_socket(buffer_bytes: int = 16 * 1024 * 1024) -> UdpSocket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tune_buffers(sock, buffer_bytes)
    return UdpSocket(sock)


def tune_buffers(sock: Any, size: int) -> None:
    # The default buffers drop datagrams under load even on loopback. The FORCE variants
    # pass the sysctl limit but need privileges; fall back to the plain ones.
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            try:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
            except OSError:
                pass


class RttEstimator:
    """Jacobson/Karels smoothed RTT, as TCP does (RFC 6298), with our own bounds."""

    def __init__(self, initial: float = 0.25, min_rto: float = 0.05, max_rto: float = 2.0) -> None:
        self.srtt: float | None = None
        self.rttvar = initial / 2
        self.min_rto, self.max_rto = min_rto, max_rto
        self._rto = initial
        self.backoff = 1.0

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._rto = self.srtt + max(4 * self.rttvar, 0.005)
        self.backoff = 1.0

    def timed_out(self) -> None:
        self.backoff = min(self.backoff * 2, 16.0)

    def rto(self) -> float:
        return min(self.max_rto, max(self.min_rto, self._rto * self.backoff))


@dataclass
class _ClientSession:
    session_id: int
    cipher: DatagramCipher
    send_seq: int = 0

    def next_seq(self) -> int:
        self.send_seq += 1
        return self.send_seq


@dataclass
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    reply: dict[Any, Any] | None = None
    epoch: int = 0
    reset: bool = False
    assembly: Reassembly | None = None  # for a request that takes a fragmented reply
    progress: int = 0  # fragments received so far


class _Pieces:
    """The stage pieces of one ``send_pieces`` call in flight: each under a request id of
    its own (the daemon answers each), all answered into this one waiter."""

    __slots__ = ("acked", "answers", "event", "heard", "in_flight", "problem", "reset", "window")

    def __init__(self, window: trio.Semaphore) -> None:
        self.window = window  # one permit held per piece in flight
        self.event = trio.Event()  # set by every answer
        self.in_flight: dict[int, tuple[int, float, bool]] = {}  # id -> (piece, sent, first)
        self.acked: set[int] = set()  # pieces the daemon holds
        self.answers: list[float] = []  # round trips of first sends answered, for the RTT
        self.problem: tuple[dict[Any, Any], int] | None = None  # the first answer not OK
        self.heard = False  # any answer since the caller last looked
        self.reset = False

    def answered(self, request_id: int, reply: dict[Any, Any], epoch: int) -> None:
        sent = self.in_flight.pop(request_id, None)
        if sent is None:
            return
        self.window.release()
        self.heard = True
        piece, at, first = sent
        if reply.get("r") == Code.OK:
            self.acked.add(piece)
            if first:
                self.answers.append(trio.current_time() - at)
        elif self.problem is None:
            self.problem = (reply, epoch)
        self.event.set()


@dataclass
class DaemonLink:
    osd_id: int
    address: Address
    window: trio.Semaphore
    rtt: RttEstimator = field(default_factory=RttEstimator)
    # Requests whose work grows with their data (a staged extent's commit: a write of MiBs
    # replicated) are timed apart: folded into `rtt`, they were sent again every time.
    slow_rtt: RttEstimator = field(default_factory=RttEstimator)
    session: _ClientSession | None = None
    unanswered: int = 0  # sends in a row that met no answer at all
    hello_lock: trio.Lock = field(default_factory=trio.Lock)
    hello_waiter: _Waiter | None = None


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
        self._waiters: dict[tuple[int, int], _Waiter | _Pieces] = {}
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
            if waiter is not None:
                waiter.reset = True
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
        key = (header.session_id, header.request_id)
        waiter = self._waiters.get(key)
        if isinstance(waiter, _Pieces):
            del self._waiters[key]
            reply = wire_body.unpack_untrusted(raw)
            code = reply.get("r")
            self.stats.replies[code if isinstance(code, int) else -1] += 1
            waiter.answered(header.request_id, reply, header.epoch)
            return
        if waiter is None or waiter.event.is_set():
            return  # a duplicate, or the answer to a request we gave up on
        waiter.reply, waiter.epoch = wire_body.unpack_untrusted(raw), header.epoch
        waiter.event.set()

    def _on_fragment(self, session: _ClientSession, header: Header, data: bytes) -> None:
        """One piece of a fragmented reply, opened straight into its place in the reply
        (``store.wire.fragments``). `header` is not authenticated yet."""
        waiter = self._waiters.get((header.session_id, header.request_id))
        if waiter is None or waiter.event.is_set():
            return  # a duplicate, or the answer to a request we gave up on
        if isinstance(waiter, _Pieces) or waiter.assembly is None:
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
    ) -> _ClientSession:
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
            waiter = _Waiter()
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
            link.session = _ClientSession(session_id, DatagramCipher(keys, "client"))
            return link.session

    async def _exchange(
        self,
        link: DaemonLink,
        waiter: _Waiter,
        make: Callable[[], bytes | bytearray],
        deadline: float,
        session: _ClientSession | None = None,
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

        Each piece is a request of its own, answered on its own, but the pieces are sent
        from this one task as fast as the link's window lets them, and their answers are
        collected together: a piece unanswered for one RTO is sent again (under a new
        sequence number and request id: a piece is the same wherever it lands twice). A
        run of RTOs without any answer, a RESET, or `give_up` end as for ``request``.
        """
        link = self._link(osd_id, address)
        todo = deque(range(len(pieces)))
        tried: set[int] = set()
        batch = _Pieces(link.window)
        session: _ClientSession | None = None
        self.stats.requests += len(pieces)
        try:
            while True:
                if session is None or link.session is not session or batch.reset:
                    if session is not None:
                        # A new session: what was in flight on the old one goes again.
                        todo.extendleft(self._drop_in_flight(batch, session))
                    batch.reset = False
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

    def _drop_in_flight(self, batch: _Pieces, session: _ClientSession) -> list[int]:
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
                waiter = _Waiter(assembly=assembly)
                key = (session.session_id, request_id)
                self._waiters[key] = waiter

                def make(session: _ClientSession = session) -> bytes | bytearray:
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
