"""A storage daemon under a flood of hostile datagrams.

The test opens its own session with one daemon, byte by byte as ``docs/protocol.md``
describes it (a real ticket from the master, HELLO, derived datagram keys), then sends it
about ten thousand bad datagrams of known kinds, mixed: random bytes, good headers with
random bodies, truncated and replayed sealed requests, requests sealed with a wrong key,
HELLOs with garbage tickets. Every few hundred datagrams a real request serves as a
barrier: its reply means the daemon has read everything sent before it, so no datagram is
lost to a full socket buffer. Afterwards the daemon must be alive, serve a normal client,
and report each kind of drop under its reason through the master's ``status``.
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from store import auth
from store.client.api import Client
from store.client.master_link import MasterLink
from store.client.udp import Address, tune_buffers
from store.errors import Code
from store.placement import ClusterMap, pg_of, primary
from store.rpc import parse_hostport
from store.wire import body as wire_body
from store.wire import stages
from store.wire.datagram import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    STAGE_PREFIX_SIZE,
    TAG_SIZE,
    VERSION,
    DatagramCipher,
    DatagramKeys,
    DatagramType,
    derive_datagram_keys,
    encode_unsealed,
    open_unsealed_untrusted,
    parse_header_untrusted,
)
from tests.cluster.harness import Cluster

TARGET = 0
POOL = "default"
# The clear header of docs/protocol.md, built by hand so that any field can be bent.
HEADER = struct.Struct("!2sBBBBHQQQI")
BARRIER_EVERY = 250


def raw_header(
    type: int,
    session_id: int,
    *,
    seq: int = 0,
    request_id: int = 0,
    epoch: int = 0,
    flags: int = 0,
    magic: bytes = b"SD",
    version: int = VERSION,
    reserved8: int = 0,
    reserved16: int = 0,
) -> bytes:
    return HEADER.pack(
        magic, version, type, flags, reserved8, reserved16, session_id, seq, request_id, epoch
    )


@dataclass
class RawSession:
    """One client session with one daemon, made by hand on the test's own socket."""

    sock: trio.socket.SocketType
    address: Address
    osd_id: int
    ticket: bytes
    session_key: bytes
    epoch: int
    session_id: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "big") | 1)
    cipher: DatagramCipher | None = None
    seq: int = 0
    request_id: int = 0
    replies: Counter[int] = field(default_factory=Counter)  # request id -> REPLYs received
    refusals: list[dict[Any, Any]] = field(default_factory=list)
    resets: int = 0

    def hello_body(self, session_id: int, ticket: bytes, mac: bytes | None = None) -> bytes:
        nonce, ts = os.urandom(16), time.time()
        if mac is None:
            mac = auth.hello_mac(self.session_key, session_id, nonce, ts, self.osd_id, 1)
        return wire_body.pack({"ticket": ticket, "cn": nonce, "ts": ts, "inst": 1, "mac": mac})

    async def hello(self) -> None:
        nonce, ts = os.urandom(16), time.time()
        mac = auth.hello_mac(self.session_key, self.session_id, nonce, ts, self.osd_id, 1)
        hello = encode_unsealed(
            DatagramType.HELLO,
            self.session_id,
            0,
            self.epoch,
            wire_body.pack({"ticket": self.ticket, "cn": nonce, "ts": ts, "inst": 1, "mac": mac}),
        )
        for _ in range(10):
            await self.sock.sendto(hello, self.address)
            with trio.move_on_after(2.0):
                while True:
                    data, _ = await self.sock.recvfrom(65535)
                    header, raw = open_unsealed_untrusted(data)
                    if header.type == DatagramType.HELLO_REPLY:
                        break
                reply = wire_body.unpack_untrusted(raw)
                assert reply["r"] == Code.OK, reply
                assert auth.verify_hello_reply_mac(
                    self.session_key, self.session_id, nonce, reply["sn"], self.osd_id, reply["mac"]
                )
                keys = derive_datagram_keys(self.session_key, nonce, reply["sn"], self.osd_id)
                self.cipher = DatagramCipher(keys, "client")
                return
        raise AssertionError(f"osd.{self.osd_id} never answered our HELLO")

    def request(self, body: dict[str, Any], request_id: int | None = None) -> bytes:
        """A real sealed REQUEST with the next seq (and a new request id unless given)."""
        assert self.cipher is not None
        if request_id is None:
            self.request_id += 1
            request_id = self.request_id
        self.seq += 1
        return self.cipher.seal(
            DatagramType.REQUEST,
            self.session_id,
            self.seq,
            request_id,
            self.epoch,
            wire_body.pack(body),
            True,
        )

    def on_datagram(self, data: bytes) -> None:
        """Account for whatever the daemon sent us: replies, RESETs, hello refusals."""
        assert self.cipher is not None
        header = parse_header_untrusted(data)
        if header.type == DatagramType.REPLY and header.session_id == self.session_id:
            header, _ = self.cipher.open_untrusted(data)
            self.replies[header.request_id] += 1
        elif header.type == DatagramType.RESET:
            self.resets += 1
        elif header.type == DatagramType.HELLO_REPLY:
            self.refusals.append(wire_body.unpack_untrusted(open_unsealed_untrusted(data)[1]))

    async def listen(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            while True:
                self.on_datagram((await self.sock.recvfrom(65535))[0])

    async def round_trip(self, body: dict[str, Any]) -> None:
        """Send a real request until it is answered. The daemon reads its socket in order,
        so its reply also means it has read every datagram we sent before."""
        self.request_id += 1
        request_id = self.request_id
        for _ in range(10):
            await self.sock.sendto(self.request(body, request_id), self.address)
            with trio.move_on_after(2.0):
                while not self.replies[request_id]:
                    self.on_datagram((await self.sock.recvfrom(65535))[0])
                return
        raise AssertionError(f"osd.{self.osd_id} stopped answering real requests")


def object_led_by(m: ClusterMap, osd_id: int) -> str:
    pool = m.pool_by_name(POOL)
    for i in range(10000):
        name = f"hostile-{i}"
        if primary(m, pool.id, pg_of(pool, name)) == osd_id:
            return name
    raise AssertionError(f"no object of pool {POOL!r} has osd.{osd_id} as its primary")


def dropped_of(status: dict[Any, Any], osd_id: int) -> Counter[str]:
    reports = status["reports"]
    report = reports.get(osd_id, reports.get(str(osd_id)))
    assert report is not None, f"no report from osd.{osd_id}: {sorted(reports)}"
    return Counter(report.get("dropped", {}))


def hostile_datagrams(
    rng: random.Random, s: RawSession, stat: dict[str, Any], pg: int, replayable: bytes
) -> list[tuple[bytes, str]]:
    """About ten thousand bad datagrams, each with the drop reason it must be counted as."""
    out: list[tuple[bytes, str]] = []

    def stranger() -> int:
        return rng.getrandbits(64) | 1

    # Random bytes, mostly small, a few of the largest size a datagram can have.
    for _ in range(3000):
        size = rng.choice([rng.randrange(0, 64), rng.randrange(0, 1500)])
        if rng.random() < 0.005:
            size = MAX_DATAGRAM
        out.append((rng.randbytes(size), "malformed"))
    # Well-formed headers with random bodies.
    for _ in range(600):
        body = rng.randbytes(rng.randrange(0, 400))
        out.append((raw_header(DatagramType.HELLO, stranger()) + body, "malformed"))
    for _ in range(600):
        header = raw_header(
            DatagramType.REQUEST,
            stranger(),
            seq=rng.randrange(1, 1 << 40),
            flags=rng.choice([0, 1]),
            request_id=rng.getrandbits(64),
        )
        out.append((header + rng.randbytes(rng.randrange(TAG_SIZE, 400)), "unknown_session"))
    for _ in range(600):
        header = raw_header(
            DatagramType.REQUEST,
            s.session_id,
            seq=rng.randrange(1, 1 << 40),
            flags=rng.choice([0, 1]),
            request_id=rng.getrandbits(64),
        )
        out.append((header + rng.randbytes(rng.randrange(TAG_SIZE, 400)), "bad_mac"))
    for _ in range(300):
        kind = rng.choice([DatagramType.HELLO_REPLY, DatagramType.REPLY, DatagramType.RESET])
        header = raw_header(kind, rng.choice([s.session_id, stranger()]), seq=rng.randrange(2))
        out.append((header + rng.randbytes(rng.randrange(0, 200)), "malformed"))
    # Headers bent in one field each.
    for _ in range(200):
        bend: dict[str, Any] = rng.choice(
            [
                {"magic": b"DS"},
                {"version": rng.choice([0, 1, 2, 3, 5, 255])},
                {"type": rng.choice([0, 6, 200])},
                {"flags": rng.choice([4, 0x80, 0xFF])},
                {"reserved8": rng.randrange(1, 256)},
                {"reserved16": rng.randrange(1, 1 << 16)},
                {"session_id": 0},
            ]
        )
        fields: dict[str, Any] = {"type": DatagramType.REQUEST, "session_id": s.session_id}
        fields.update(bend)
        header = raw_header(fields.pop("type"), fields.pop("session_id"), seq=1, **fields)
        out.append((header + rng.randbytes(64), "malformed"))
    # Stage pieces of our session: forged ones that name a real stage place, pieces that
    # carry no data or run past their stage, and real ones cut short.
    for _ in range(300):
        length = rng.randrange(1, 2000)
        size = length + rng.randrange(0, 1 << 20)
        prefix = stages.PREFIX.pack(rng.getrandbits(63), 0, size, stat["p"], pg)
        header = raw_header(
            DatagramType.REQUEST, s.session_id, seq=rng.randrange(1, 1 << 40), flags=3
        )
        out.append((header + prefix + rng.randbytes(length + TAG_SIZE), "bad_mac"))
    for _ in range(100):
        size = rng.randrange(1, 1000)
        prefix = stages.PREFIX.pack(rng.getrandbits(63), size, size, stat["p"], pg)
        header = raw_header(DatagramType.REQUEST, s.session_id, seq=1, flags=3)
        out.append((header + prefix + rng.randbytes(rng.randrange(0, 100)), "malformed"))
    assert s.cipher is not None
    for _ in range(20):
        piece = stages.stage_piece(rng.getrandbits(63), 0, 5000, stat["p"], pg, b"p" * 5000)
        s.seq += 1
        real = bytes(
            s.cipher.seal_fragment(s.session_id, s.seq, 1, s.epoch, *piece, rng.random() < 0.5)
        )
        cut = rng.randrange(HEADER_SIZE + STAGE_PREFIX_SIZE + TAG_SIZE + 1, len(real))
        out.append((real[:cut], "bad_mac"))
    # Every truncation of real sealed requests (never sent whole).
    for _ in range(20):
        real = s.request(stat)
        for cut in range(len(real)):
            reason = "malformed" if cut < HEADER_SIZE + TAG_SIZE else "bad_mac"
            out.append((real[:cut], reason))
    # A request that was already accepted, again and again.
    out.extend((replayable, "replay") for _ in range(1000))
    # Requests of our session sealed with a key that is not the session's.
    wrong = DatagramCipher(DatagramKeys(os.urandom(32), os.urandom(32)), "client")
    for _ in range(1000):
        s.seq += 1
        sealed = wrong.seal(
            DatagramType.REQUEST, s.session_id, s.seq, 1, s.epoch, wire_body.pack(stat), True
        )
        out.append((sealed, "bad_mac"))
    # HELLOs with garbage tickets, forged-looking tickets, or a real ticket and a wrong MAC.
    for i in range(1100):
        if i < 100:
            ticket, mac = s.ticket, os.urandom(32)
        elif i < 400:
            ticket, mac = (
                b"T1" + struct.pack(">I", rng.choice([0, 1, 2, 99])) + os.urandom(80),
                None,
            )
        else:
            ticket, mac = rng.randbytes(rng.randrange(0, 300)), None
        session_id = stranger()
        hello = encode_unsealed(
            DatagramType.HELLO, session_id, 0, s.epoch, s.hello_body(session_id, ticket, mac)
        )
        out.append((hello, "auth_failed"))
    rng.shuffle(out)
    return out


async def test_daemon_survives_a_flood_of_hostile_datagrams(cluster: Cluster) -> None:
    rng = random.Random(7)
    config = cluster.config()
    async with trio.open_nursery() as nursery:
        master = await MasterLink.open(config, nursery)
        try:
            assert master.map is not None and master.credentials is not None
            m = master.map
            name = object_led_by(m, TARGET)
            pool_id = m.pool_by_name(POOL).id
            stat = {"p": pool_id, "o": name, "ops": [["stat"]]}
            before = dropped_of(await master.call("status"), TARGET)

            sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with sock:
                tune_buffers(sock, 8 * 1024 * 1024)
                await sock.bind(("127.0.0.1", 0))
                s = RawSession(
                    sock,
                    parse_hostport(m.osds[TARGET].addr),
                    TARGET,
                    master.credentials.ticket,
                    master.credentials.session_key,
                    m.epoch,
                )
                await s.hello()

                # One valid request sent twice with the same seq: served once, then dropped.
                replayable = s.request(stat)
                replayed_id = s.request_id
                await sock.sendto(replayable, s.address)
                await s.listen(1.0)
                assert s.replies[replayed_id] == 1
                await sock.sendto(replayable, s.address)
                await s.listen(1.0)
                await s.round_trip(stat)
                assert s.replies[replayed_id] == 1, "a replayed datagram was answered"
                expected = Counter({"replay": 1})

                pg = pg_of(m.pools[pool_id], name)
                flood = hostile_datagrams(rng, s, stat, pg, replayable)
                for i, (datagram, reason) in enumerate(flood, 1):
                    await sock.sendto(datagram, s.address)
                    expected[reason] += 1
                    if i % BARRIER_EVERY == 0:
                        await s.round_trip(stat)
                await s.round_trip(stat)
                await s.listen(0.5)
                assert s.replies[replayed_id] == 1, "a replayed datagram was answered"
                # Strangers' sealed requests were told to say hello; bad tickets were refused.
                assert s.resets > 0
                assert s.refusals and all(r["r"] == Code.EAUTH for r in s.refusals)

            assert cluster.procs[f"osd.{TARGET}"].poll() is None, "the daemon died"
            async with Client.connect(config) as client:
                for i in range(5):
                    payload = rng.randbytes(rng.randrange(1, 100_000))
                    await client.write_full(POOL, f"{name}-after-{i}", payload)
                    assert await client.read(POOL, f"{name}-after-{i}") == payload
                await client.write_full(POOL, name, b"still serving")
                assert await client.read(POOL, name) == b"still serving"

            # The counters arrive with the daemon's heartbeats.
            delta: Counter[str] = Counter()
            give_up = trio.current_time() + 20.0
            while trio.current_time() < give_up:
                now = dropped_of(await master.call("status"), TARGET)
                delta = Counter({k: v - before[k] for k, v in now.items() if v > before[k]})
                if all(delta[reason] >= count for reason, count in expected.items()):
                    break
                await trio.sleep(0.5)
        finally:
            nursery.cancel_scope.cancel()
            await master.aclose()

    assert sum(expected.values()) > 9_500
    assert set(expected) == {"malformed", "unknown_session", "bad_mac", "replay", "auth_failed"}
    # Each datagram counted once, under the reason it was made to provoke, and nothing else
    # (no internal_error: the daemon handled every one of them on purpose).
    assert delta == expected, f"expected {dict(expected)}, the daemon reports {dict(delta)}"
