"""A terrible in-memory network, a fake daemon on it and a client transport: the rig of
the transport's tests (test_transport_lossy, test_transport_pieces).

The network drops, duplicates and delays (so reorders) datagrams from a seeded
``random.Random``; run under trio's ``MockClock`` with autojump, retransmission timeouts
and deadlines take no real time. The fake daemon is a thin shell around the real
``SessionTable`` (real tickets, real datagram keys, real anti-replay window), a real
``StagingArea`` for stage pieces, and a dict of counters; it answers a retransmitted
increment from the session's reply cache the way ``store.osd.front`` does, so an increment
applied twice shows in the final counts.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import trio

from store import auth
from store.client.transport import Transport
from store.client.udp import Address
from store.errors import Code, MalformedDatagram, ProtocolError
from store.osd.sessions import ExpiredSession, Replayed, Session, SessionTable, UnknownSession
from store.osd.staging import StagingArea
from store.wire import fragments, stages
from store.wire.datagram import DatagramType, Header, parse_header_untrusted

OSD_ID = 7
DAEMON: Address = ("10.0.0.7", 6800)
CLIENT: Address = ("10.0.0.1", 40000)
EPOCH = 3
TICKET_TTL = 3600.0


class LossyNetwork:
    """Datagram delivery between in-memory sockets: lossy, duplicating, reordering."""

    def __init__(
        self,
        nursery: trio.Nursery,
        rng: random.Random,
        *,
        drop: float = 0.3,
        duplicate: float = 0.1,
        max_delay: float = 0.08,
    ) -> None:
        self.nursery = nursery
        self.rng = rng
        self.drop, self.duplicate, self.max_delay = drop, duplicate, max_delay
        self.inboxes: dict[Address, trio.MemorySendChannel[tuple[bytes, Address]]] = {}
        self.sent = self.dropped = self.duplicated = 0

    def socket(self, address: Address) -> MemorySocket:
        send, receive = trio.open_memory_channel[tuple[bytes, Address]](math.inf)
        self.inboxes[address] = send
        return MemorySocket(self, address, receive)

    def transmit(self, data: bytes, source: Address, destination: Address) -> None:
        self.sent += 1
        if self.rng.random() < self.drop:
            self.dropped += 1
            return
        copies = 1
        if self.rng.random() < self.duplicate:
            copies, self.duplicated = 2, self.duplicated + 1
        for _ in range(copies):
            delay = self.rng.uniform(0, self.max_delay)
            self.nursery.start_soon(self._deliver_later, delay, data, source, destination)

    async def _deliver_later(
        self, delay: float, data: bytes, source: Address, destination: Address
    ) -> None:
        await trio.sleep(delay)
        inbox = self.inboxes.get(destination)
        if inbox is not None:  # nothing listens there: the datagram is lost
            inbox.send_nowait((data, source))


class MemorySocket:
    """What ``store.client.transport.DatagramSocket`` expects, on a ``LossyNetwork``."""

    def __init__(
        self,
        network: LossyNetwork,
        address: Address,
        inbox: trio.MemoryReceiveChannel[tuple[bytes, Address]],
    ) -> None:
        self.network, self.address, self.inbox = network, address, inbox

    async def sendto(self, data: bytes | bytearray, address: Address) -> int:
        await trio.lowlevel.checkpoint()
        self.network.transmit(bytes(data), self.address, address)
        return len(data)

    async def recvfrom(self, size: int) -> tuple[bytes, Address]:
        data, source = await self.inbox.receive()
        return data[:size], source

    async def recv_many(self, size: int) -> list[bytes]:
        received = [(await self.inbox.receive())[0][:size]]
        while True:
            try:
                received.append(self.inbox.receive_nowait()[0][:size])
            except trio.WouldBlock:
                return received

    def close(self) -> None:
        self.network.inboxes.pop(self.address, None)


class CounterDaemon:
    """A storage daemon reduced to its UDP front, serving counters instead of objects.

    ``{"op": "incr", "key": k}`` adds one to counter k after a random delay, now and then
    longer than the client's largest retransmission timeout (so that retransmissions meet
    it in progress), and answers the new value; ``{"op": "get",
    "key": k}`` answers the value at once.
    """

    def __init__(
        self,
        network: LossyNetwork,
        service_keys: auth.ServiceKeys,
        rng: random.Random,
        *,
        slow_apply: float = 0.1,
    ) -> None:
        self.sock = network.socket(DAEMON)
        self.service_keys = service_keys
        self.rng = rng
        self.slow_apply = slow_apply
        self.counters: Counter[str] = Counter()
        self.applied = 0
        self.dropped: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.answer_requests = True
        self.reset_unknown = True  # False: drop unknown sessions silently, no RESET
        self.results: dict[int, int] = {}  # request id -> value, across sessions
        self.working: set[int] = set()
        self.sessions = self._new_table()
        self.staging = StagingArea(time.monotonic)
        self.piece_answer = Code.OK
        self.busy = 0.005  # seconds between taking a datagram and reading those waiting
        # session id -> (session, latest piece's header, address, ids of the pieces held)
        self._acks: dict[int, tuple[Session, Header, Address, list[int]]] = {}
        self._nursery: trio.Nursery | None = None

    def _new_table(self) -> SessionTable:
        return SessionTable(OSD_ID, lambda: self.service_keys, time.time)

    def restart(self) -> None:
        """Lose every session, as a restarted process would; the counters are on disk."""
        self.sessions = self._new_table()

    async def run(self) -> None:
        """As ``store.osd.front`` does: every datagram waiting, then the pieces held among
        them acknowledged together. A datagram finds the daemon busy for `busy` seconds,
        while more may come (delivered one by one, they would never wait together)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                data, address = await self.sock.recvfrom(65535)
                await trio.sleep(self.busy)
                await self._on_datagram(data, address)
                while True:
                    try:
                        data, address = self.sock.inbox.receive_nowait()
                    except trio.WouldBlock:
                        break
                    await self._on_datagram(data, address)
                await self._send_acks()

    async def _send_acks(self) -> None:
        acks, self._acks = self._acks, {}
        for session, header, address, ids in acks.values():
            self.served["acks_together" if len(ids) > 1 else "ack_alone"] += 1
            await self._reply(session, header, address, stages.acknowledgement(ids))

    async def _on_datagram(self, data: bytes, address: Address) -> None:
        sessions = self.sessions
        try:
            header = parse_header_untrusted(data)
        except MalformedDatagram:
            self.dropped["malformed"] += 1
            return
        if header.type == DatagramType.HELLO:
            reply = sessions.handle_hello_untrusted(data, EPOCH)
            self.served["hello"] += 1
            await self.sock.sendto(reply, address)
            return
        if header.type == DatagramType.REQUEST and header.fragment:
            await self._piece(data, header, address)
            return
        try:
            session, header, body = sessions.open_request_untrusted(data, header)
        except (UnknownSession, ExpiredSession):
            self.dropped["unknown_session"] += 1
            if self.reset_unknown:
                await self.sock.sendto(sessions.reset_for(header, EPOCH), address)
            return
        except Replayed:
            self.dropped["replay"] += 1
            return
        except ProtocolError:
            self.dropped["malformed"] += 1
            return
        if not self.answer_requests:
            self.dropped["ignored"] += 1
            return
        key = body["key"]
        assert isinstance(key, str)
        if body["op"] == "blob":
            await self._blob(session, header, address, key, body.get("frag"))
            return
        if body["op"] == "get":
            self.served["get"] += 1
            await self._reply(session, header, address, {"r": 0, "v": self.counters[key]})
            return
        assert body["op"] == "incr"
        cached = session.replies.get(header.request_id)
        if cached is not None:
            self.served["incr_cached"] += 1
            await self.sock.sendto(cached, address)
            return
        if header.request_id in self.results:
            # A repeat on a new session: recognised by its id, as the PG log does.
            self.served["incr_logged"] += 1
            value = self.results[header.request_id]
            await self._reply(session, header, address, {"r": 0, "v": value})
            return
        if header.request_id in session.in_progress or header.request_id in self.working:
            # As the real daemon does: "still working on it", so the client waits.
            self.served["incr_in_progress"] += 1
            await self._reply(session, header, address, {"r": int(Code.INPROGRESS)})
            return
        session.in_progress.add(header.request_id)
        self.working.add(header.request_id)
        assert self._nursery is not None
        self._nursery.start_soon(self._increment, session, header, address, key)

    async def _piece(self, data: bytes, header: Header, address: Address) -> None:
        """A stage piece, opened into the staging area as ``store.osd.front`` does, and
        answered ``piece_answer`` (OK unless a test says otherwise)."""
        try:
            session = self.sessions.session_of(header)
        except UnknownSession:
            self.dropped["unknown_session"] += 1
            if self.reset_unknown:
                await self.sock.sendto(self.sessions.reset_for(header, EPOCH), address)
            return
        info = stages.parse_untrusted(data)
        owner = (session.client, session.instance)
        target, created = self.staging.target(
            owner, info.token, info.pool, info.pg, info.offset, info.length, info.size
        )
        try:
            out = target if target is not None else memoryview(bytearray(info.length))
            self.sessions.open_piece_into(session, data, header, out)
        except ProtocolError as exc:
            if created:
                self.staging.forget(owner, info.token)
            self.dropped["replay" if isinstance(exc, Replayed) else "malformed"] += 1
            return
        if not self.answer_requests:
            self.dropped["ignored"] += 1
            return
        if target is not None and self.piece_answer == Code.OK:
            self.staging.fill(owner, info.token, info.offset, info.length)
        self.served["piece" if target is not None else "piece_again"] += 1
        if self.piece_answer != Code.OK:
            await self._reply(session, header, address, {"r": int(self.piece_answer)})
            return
        held = self._acks.setdefault(session.session_id, (session, header, address, []))
        self._acks[session.session_id] = (session, header, address, [*held[3], header.request_id])

    async def _increment(
        self, session: Session, header: Header, address: Address, key: str
    ) -> None:
        slow = self.rng.random() < self.slow_apply
        await trio.sleep(self.rng.uniform(2.5, 4.0) if slow else self.rng.uniform(0, 0.2))
        self.counters[key] += 1
        self.applied += 1
        self.results[header.request_id] = self.counters[key]
        self.working.discard(header.request_id)
        session.in_progress.discard(header.request_id)
        self.served["incr"] += 1
        datagram = await self._reply(session, header, address, {"r": 0, "v": self.counters[key]})
        session.remember_reply(header.request_id, datagram)

    async def _blob(
        self, session: Session, header: Header, address: Address, key: str, frag: Any
    ) -> None:
        """A large read: BLOB_SIZE bytes named by the counter's value (its version), sent
        in fragments when the request asks for them, as ``store.osd.front`` does."""
        self.served["blob"] += 1
        version = (EPOCH, self.counters[key])
        head, tail = fragments.reply_parts(
            {"r": 0, "v": list(version), "res": [blob_of(key, version)]}
        )
        if frag is None or fragments.packed_size(head, tail) > frag[0]:
            await self._reply(session, header, address, {"r": int(Code.EFBIG)})
            return
        for prefix, piece in fragments.split(head, tail, version, frag[1]):
            datagram = self.sessions.seal_fragment(session, header, EPOCH, prefix, piece)
            await self.sock.sendto(datagram, address)

    async def _reply(
        self, session: Session, header: Header, address: Address, body: dict[str, object]
    ) -> bytes:
        datagram = self.sessions.seal_reply(session, header, EPOCH, body)
        await self.sock.sendto(datagram, address)
        return datagram


BLOB_SIZE = 300_000


def blob_of(key: str, version: tuple[int, int]) -> bytes:
    return random.Random(f"{key}/{version}").randbytes(BLOB_SIZE)


def credentials_for(
    client: str = "alice",
) -> tuple[auth.ServiceKeys, Callable[[], tuple[bytes, bytes]]]:
    keys = auth.ServiceKeys()
    now = time.time()
    keys.rotate(now, rotation_interval=3600.0, ticket_ttl=TICKET_TTL)
    ticket = auth.issue_ticket(client, auth.Caps.parse(["counters=rw"]), now, TICKET_TTL)
    blob = auth.seal_ticket(keys, ticket)
    return keys, lambda: (blob, ticket.session_key)


class Rig:
    """A lossy network with a counter daemon and a client transport on it."""

    def __init__(self, nursery: trio.Nursery, seed: int, **network: Any) -> None:
        rng = random.Random(seed)
        self.network = LossyNetwork(nursery, rng, **network)
        keys, credentials = credentials_for()
        self.daemon = CounterDaemon(self.network, keys, rng)
        self.transport = Transport(self.network.socket(CLIENT), credentials, lambda: EPOCH)
        nursery.start_soon(self.daemon.run)
        nursery.start_soon(self.transport.run)

    async def call(self, body: dict[str, Any], timeout: float = 120.0, slow: bool = False) -> Any:
        reply, epoch = await self.transport.request(
            OSD_ID,
            DAEMON,
            body,
            encrypt=True,
            deadline=trio.current_time() + timeout,
            slow=slow,
        )
        assert epoch == EPOCH
        assert reply["r"] == 0, reply
        return reply["v"]
