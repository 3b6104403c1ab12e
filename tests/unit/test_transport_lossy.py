"""The client transport over a terrible in-memory network, against a fake daemon.

The network drops, duplicates and delays (so reorders) datagrams from a seeded
``random.Random``; the clock is trio's ``MockClock`` with autojump, so retransmission
timeouts and deadlines take no real time. The fake daemon is a thin shell around the real
``SessionTable`` (real tickets, real datagram keys, real anti-replay window) and a dict of
counters, and answers a retransmitted increment from the session's reply cache the way
``store.osd.front`` does, so an increment applied twice shows in the final counts.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from store import auth
from store.client.transport import REHELLO_AFTER, Address, RttEstimator, Transport
from store.errors import ClientTimeout, Code, MalformedDatagram, ProtocolError
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
        self._nursery: trio.Nursery | None = None

    def _new_table(self) -> SessionTable:
        return SessionTable(OSD_ID, lambda: self.service_keys, time.time)

    def restart(self) -> None:
        """Lose every session, as a restarted process would; the counters are on disk."""
        self.sessions = self._new_table()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                data, address = await self.sock.recvfrom(65535)
                await self._on_datagram(data, address)

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
        await self._reply(session, header, address, {"r": int(self.piece_answer)})

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


async def test_slow_requests_have_a_timeout_of_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests that take the daemon up to 0.2 s, each after a few answered at once (as a
    staged extent's commit follows its pieces), are sent again and again when timed with
    the quick ones, and hardly ever when timed apart."""
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=11, drop=0.0, duplicate=0.0, max_delay=0.0)
        rig.daemon.slow_apply = 0.0
        stats = rig.transport.stats

        async def increments(slow: bool) -> int:
            retransmits = 0
            for _ in range(20):
                for _ in range(5):
                    await rig.call({"op": "get", "key": "a"})
                before = stats.retransmits
                await rig.call({"op": "incr", "key": "a"}, slow=slow)
                retransmits += stats.retransmits - before
            return retransmits

        apart, together = await increments(True), await increments(False)
        nursery.cancel_scope.cancel()
    assert rig.daemon.counters["a"] == 40
    assert together >= 8
    assert apart <= 4


async def test_every_increment_applied_once_over_a_lossy_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    keys = [f"k{i}" for i in range(8)]
    plan = [keys[i % len(keys)] for i in range(240)]
    answers: dict[str, list[int]] = {key: [] for key in keys}
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=20240611)

        async def incr(key: str) -> None:
            answers[key].append(await rig.call({"op": "incr", "key": key}))

        async with trio.open_nursery() as clients:
            for key in plan:
                clients.start_soon(incr, key)
        got: dict[str, int] = {}

        async def get(key: str) -> None:
            got[key] = await rig.call({"op": "get", "key": key})

        async with trio.open_nursery() as clients:
            for key in keys:
                clients.start_soon(get, key)
        nursery.cancel_scope.cancel()

    wanted = Counter(plan)
    # Each request got its own answer: the values of one counter were handed out once each.
    for key in keys:
        assert sorted(answers[key]) == list(range(1, wanted[key] + 1)), key
    assert got == dict(wanted)
    assert rig.daemon.counters == wanted
    assert rig.daemon.applied == len(plan)
    stats = rig.transport.stats
    assert stats.requests == len(plan) + len(keys)
    assert stats.retransmits > 0
    assert stats.timeouts == 0
    # The network was as bad as claimed, and the daemon's duplicate handling was exercised.
    assert rig.network.dropped > 0.2 * rig.network.sent
    assert rig.network.duplicated > 0
    assert rig.daemon.served["incr_cached"] > 0
    assert rig.daemon.served["incr_in_progress"] > 0  # and the client waited on INPROGRESS
    assert rig.daemon.dropped["replay"] > 0  # duplicated datagrams met the window


async def read_blobs(rig: Rig, reads: int, keys: list[str], *, change: bool) -> list[Any]:
    """`reads` concurrent large reads of `keys` in turn (and, with `change`, ten increments
    of each key meanwhile, which change the version the reads meet)."""
    got: list[tuple[str, dict[Any, Any]]] = []

    async def read(key: str) -> None:
        reply, _ = await rig.transport.request(
            OSD_ID,
            DAEMON,
            {"op": "blob", "key": key},
            encrypt=True,
            deadline=trio.current_time() + 300,
            fragments=BLOB_SIZE + 1024,
        )
        got.append((key, reply))

    async def increments(key: str) -> None:
        for _ in range(10):
            await rig.call({"op": "incr", "key": key})

    async with trio.open_nursery() as clients:
        for i in range(reads):
            clients.start_soon(read, keys[i % len(keys)])
        if change:
            for key in keys:
                clients.start_soon(increments, key)
    assert len(got) == reads
    versions = []
    for key, reply in got:
        assert reply["r"] == 0
        version = (reply["v"][0], reply["v"][1])
        versions.append(version)
        assert reply["res"][0] == blob_of(key, version), (key, version)
    assert rig.transport.stats.timeouts == 0
    return versions


async def test_fragments_of_a_reply_are_kept_across_resends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Five fragments per reply over a network that drops 30 %: served once, a reply
    arrives whole only 0.7**5 = 17 % of the time, so without keeping the pieces of earlier
    servings a read would take six servings on average."""
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=77, drop=0.3, duplicate=0.1)
        await read_blobs(rig, 60, ["a", "b", "c"], change=False)
        nursery.cancel_scope.cancel()
    assert len(fragments.split(b"h", b"x" * BLOB_SIZE, (1, 1), rig.transport.max_datagram)) == 5
    assert 60 < rig.daemon.served["blob"] < 60 * 4
    assert rig.transport.stats.retransmits > 0


async def test_fragmented_replies_never_mix_two_versions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=78, drop=0.3, duplicate=0.1)
        versions = await read_blobs(rig, 60, ["a", "b", "c"], change=True)
        nursery.cancel_scope.cancel()
    # The reads met many versions of each key; each reply was whole and of one of them.
    assert len(set(versions)) > 4


async def test_a_fragment_for_a_request_that_asked_for_none_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=5, drop=0.0, duplicate=0.0, max_delay=0.0)
        with pytest.raises(ClientTimeout):
            # "frag" in the body makes the daemon send fragments, but the transport was not
            # told to take them (no `fragments=`): it must not piece together a reply.
            await rig.transport.request(
                OSD_ID,
                DAEMON,
                {"op": "blob", "key": "k", "frag": [BLOB_SIZE + 1024, 65000]},
                encrypt=True,
                deadline=trio.current_time() + 5,
            )
        nursery.cancel_scope.cancel()
    assert rig.transport.stats.dropped_by["unexpected"] > 0


async def test_request_to_a_silent_address_times_out_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=1)
        start = trio.current_time()
        deadline = start + 7.5
        with pytest.raises(ClientTimeout):
            await rig.transport.request(
                OSD_ID,
                ("10.0.0.99", 6800),
                {"op": "get", "key": "a"},
                encrypt=True,
                deadline=deadline,
            )
        ended = trio.current_time()
        nursery.cancel_scope.cancel()
    assert deadline <= ended < deadline + 0.01
    assert rig.transport.stats.timeouts == 1
    # It kept trying until the end, with backoff: more than one try, far fewer than 7.5 / 0.05.
    assert 2 <= rig.transport.stats.retransmits <= 12


async def test_request_to_a_daemon_that_stops_answering_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=2, drop=0.0, duplicate=0.0)
        assert await rig.call({"op": "incr", "key": "a"}) == 1
        await trio.sleep(1.0)  # let a late retransmission of that request land first
        rig.daemon.answer_requests = False
        retransmits = rig.transport.stats.retransmits
        deadline = trio.current_time() + 20.0
        with pytest.raises(ClientTimeout):
            await rig.transport.request(
                OSD_ID, DAEMON, {"op": "incr", "key": "a"}, encrypt=True, deadline=deadline
            )
        ended = trio.current_time()
        nursery.cancel_scope.cancel()
    assert deadline <= ended < deadline + 0.01
    assert rig.daemon.counters["a"] == 1
    # Every transmission of the request reached the daemon: the first and each retry.
    assert rig.daemon.dropped["ignored"] == rig.transport.stats.retransmits - retransmits + 1


async def test_client_says_hello_again_after_the_daemon_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=3)
        for expected in range(1, 6):
            assert await rig.call({"op": "incr", "key": "a"}) == expected
        link = rig.transport.links[(OSD_ID, DAEMON)]
        assert link.session is not None
        first_session = link.session.session_id
        hellos = rig.daemon.served["hello"]

        rig.daemon.restart()
        assert await rig.call({"op": "incr", "key": "a"}) == 6
        assert await rig.call({"op": "get", "key": "a"}) == 6
        nursery.cancel_scope.cancel()
    assert rig.transport.stats.resets >= 1
    assert rig.daemon.dropped["unknown_session"] >= 1
    assert rig.daemon.served["hello"] > hellos
    assert link.session is not None and link.session.session_id != first_session
    assert rig.daemon.counters["a"] == 6


async def test_requests_in_flight_during_a_restart_all_recover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Several requests are waiting on the same session when the daemon restarts: each of
    # them is answered RESET, and each must move to the new session rather than wait out
    # its deadline.
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=4, drop=0.0, duplicate=0.0)
        assert await rig.call({"op": "incr", "key": "a"}) == 1
        rig.daemon.answer_requests = False
        got: list[int] = []

        async def get() -> None:
            got.append(await rig.call({"op": "get", "key": "a"}, timeout=30.0))

        async with trio.open_nursery() as clients:
            for _ in range(10):
                clients.start_soon(get)
            await trio.sleep(1.0)  # all ten sent at least once, none answered
            rig.daemon.answer_requests = True
            rig.daemon.restart()
        nursery.cancel_scope.cancel()
    assert got == [1] * 10
    assert rig.transport.stats.timeouts == 0


async def test_client_starts_a_new_session_when_a_daemon_goes_silent_on_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The daemon restarted and no RESET reaches the client (here: none is sent, as when
    # our session id now names another client's session and our datagrams fail its MAC).
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=5, drop=0.0, duplicate=0.0)
        assert await rig.call({"op": "incr", "key": "a"}) == 1
        hellos = rig.daemon.served["hello"]
        (link,) = rig.transport.links.values()
        assert link.session is not None
        old_session = link.session.session_id
        rig.daemon.restart()
        rig.daemon.reset_unknown = False
        start = trio.current_time()
        assert await rig.call({"op": "incr", "key": "a"}, timeout=120.0) == 2
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert rig.transport.stats.rehellos == 1
    # The old session is forgotten: a late reply to it is a stranger's, not a forgery
    # under the new session's keys.
    assert old_session not in rig.transport._by_session
    assert link.session is not None and link.session.session_id != old_session
    assert rig.daemon.served["hello"] == hellos + 1
    assert rig.daemon.dropped["unknown_session"] == REHELLO_AFTER
    assert took < 60.0  # long before the deadline
    assert rig.daemon.counters["a"] == 2


def test_rtt_estimator_backs_off_to_the_maximum_and_a_sample_resets_it() -> None:
    est = RttEstimator(initial=0.25, min_rto=0.05, max_rto=2.0)
    assert est.rto() == pytest.approx(0.25)
    seen = []
    for _ in range(6):
        est.timed_out()
        seen.append(est.rto())
    assert seen == pytest.approx([0.5, 1.0, 2.0, 2.0, 2.0, 2.0])

    est.sample(0.1)  # first sample: srtt 0.1, rttvar 0.05, rto = srtt + 4 * rttvar
    assert est.rto() == pytest.approx(0.3)
    est.timed_out()
    assert est.rto() == pytest.approx(0.6)
    est.sample(0.1)  # steady samples shrink the variance, and the backoff is gone
    assert est.rto() == pytest.approx(0.1 + 4 * 0.0375)

    for _ in range(50):
        est.sample(0.0001)
    assert est.rto() == pytest.approx(0.05)  # never below the minimum
