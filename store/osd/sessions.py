"""Client sessions of a storage daemon, without I/O.

Theory of operation
-------------------
A client opens a session with a daemon by sending a HELLO datagram that carries its ticket
(sealed by the master with a service key the daemon knows), a fresh client nonce, a
timestamp and a MAC made with the session key inside the ticket. The daemon opens the
ticket, checks the MAC and the clock, picks a server nonce and answers HELLO_REPLY with a
MAC of its own, which proves to the client that this daemon could open the ticket. Both
sides then derive per-direction datagram keys from the session key and both nonces; every
later datagram of the session is sealed with them (``store.wire.datagram``).

A HELLO that arrives twice (the reply was lost, or someone replays it) gets the same reply
again and does not reset the session. Everything here is fed bytes and returns bytes or a
typed error; the daemon counts the errors by kind and never dies of them.

Per session the daemon keeps an anti-replay window over datagram sequence numbers, and a
cache of the replies to mutating requests keyed by request id, so that a retransmitted
write is answered from the cache instead of being applied twice.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from store import auth
from store.errors import AuthError, BadMAC, Code, MalformedDatagram, ProtocolError
from store.wire import body as wire_body
from store.wire.datagram import (
    DatagramCipher,
    DatagramType,
    Header,
    derive_datagram_keys,
    encode_unsealed,
    open_unsealed_untrusted,
)
from store.wire.replay import ReplayWindow

REPLY_CACHE_SIZE = 4096
MAX_SESSIONS = 20000


class UnknownSession(ProtocolError):
    """A sealed datagram for a session this daemon does not have (restarted, expired)."""


class Replayed(ProtocolError):
    """A datagram whose sequence number was seen before or is too old."""


class ExpiredSession(ProtocolError):
    """The ticket behind the session has expired; the client must hello again."""


@dataclass
class Session:
    session_id: int
    client: str
    caps: auth.Caps
    expires: float
    instance: int  # random id of the client process; request ids are unique within it
    client_nonce: bytes
    cipher: DatagramCipher
    hello_reply: bytes
    window: ReplayWindow = field(default_factory=ReplayWindow)
    send_seq: int = 0
    replies: OrderedDict[int, bytes | bytearray] = field(default_factory=OrderedDict)
    in_progress: set[int] = field(default_factory=set)

    def next_seq(self) -> int:
        self.send_seq += 1
        return self.send_seq

    def remember_reply(self, request_id: int, datagram: bytes | bytearray) -> None:
        self.replies[request_id] = datagram
        if len(self.replies) > REPLY_CACHE_SIZE:
            self.replies.popitem(last=False)


class SessionTable:
    def __init__(
        self,
        osd_id: int,
        service_keys: Callable[[], auth.ServiceKeys],
        clock: Callable[[], float],
    ) -> None:
        self.osd_id = osd_id
        self._service_keys = service_keys
        self._clock = clock
        self.sessions: OrderedDict[int, Session] = OrderedDict()

    def handle_hello_untrusted(self, datagram: bytes, epoch: int) -> bytes:
        """Answer a HELLO: the reply datagram. Raises AuthError / MalformedDatagram."""
        header, raw = open_unsealed_untrusted(datagram)
        if header.type != DatagramType.HELLO or header.session_id == 0:
            raise MalformedDatagram("expected a HELLO with a session id")
        hello = wire_body.unpack_untrusted(raw)
        ticket_blob, client_nonce = hello.get("ticket"), hello.get("cn")
        timestamp, mac, instance = hello.get("ts"), hello.get("mac"), hello.get("inst", 0)
        if not (
            isinstance(ticket_blob, bytes)
            and isinstance(client_nonce, bytes)
            and len(client_nonce) == 16
            and isinstance(timestamp, (int, float))
            and isinstance(mac, bytes)
            and isinstance(instance, int)
        ):
            raise MalformedDatagram("HELLO body lacks ticket, cn, ts or mac")
        existing = self.sessions.get(header.session_id)
        if existing is not None and existing.client_nonce == client_nonce:
            return existing.hello_reply
        now = self._clock()
        ticket = auth.open_ticket_untrusted(self._service_keys(), ticket_blob, now)
        if not auth.verify_hello_mac(
            ticket.session_key,
            header.session_id,
            client_nonce,
            float(timestamp),
            self.osd_id,
            mac,
            instance,
        ):
            raise AuthError(f"hello from {ticket.client!r} does not verify")
        if existing is not None and existing.client != ticket.client:
            # Session ids travel in clear: one client must not take over another's.
            raise AuthError(f"{ticket.client!r} asked for a session id {existing.client!r} holds")
        if abs(now - float(timestamp)) > auth.MAX_CLOCK_SKEW:
            raise AuthError(
                f"hello from {ticket.client!r}: clocks differ by more than {auth.MAX_CLOCK_SKEW:.0f}s"
            )
        server_nonce = os.urandom(16)
        keys = derive_datagram_keys(ticket.session_key, client_nonce, server_nonce, self.osd_id)
        reply = encode_unsealed(
            DatagramType.HELLO_REPLY,
            header.session_id,
            0,
            epoch,
            wire_body.pack(
                {
                    "r": int(Code.OK),
                    "sn": server_nonce,
                    "mac": auth.hello_reply_mac(
                        ticket.session_key,
                        header.session_id,
                        client_nonce,
                        server_nonce,
                        self.osd_id,
                    ),
                    "exp": ticket.expires,
                }
            ),
        )
        self.sessions[header.session_id] = Session(
            session_id=header.session_id,
            client=ticket.client,
            caps=ticket.caps,
            expires=ticket.expires,
            instance=instance,
            client_nonce=client_nonce,
            cipher=DatagramCipher(keys, "server"),
            hello_reply=reply,
        )
        self.sessions.move_to_end(header.session_id)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)
        return reply

    @staticmethod
    def hello_refusal(hello: Header, epoch: int, code: Code, message: str) -> bytes:
        """An unauthenticated HELLO_REPLY carrying an error, so a client can say why."""
        body = wire_body.pack({"r": int(code), "m": message})
        return encode_unsealed(DatagramType.HELLO_REPLY, hello.session_id, 0, epoch, body)

    def open_request_untrusted(
        self, datagram: bytes, header: Header
    ) -> tuple[Session, Header, dict[object, object]]:
        """Authenticate and decode a REQUEST whose header the caller has parsed.

        Raises UnknownSession, ExpiredSession, BadMAC, Replayed or MalformedDatagram.
        """
        session = self.session_of(header)
        header, raw = session.cipher.open_untrusted(datagram, header)
        self._accept(session, header)
        return session, header, wire_body.unpack_untrusted(raw)

    def session_of(self, header: Header) -> Session:
        """The session of a REQUEST, looked up by its (not yet authenticated) header."""
        if header.type != DatagramType.REQUEST:
            raise MalformedDatagram(f"unexpected datagram type {header.type.name}")
        session = self.sessions.get(header.session_id)
        if session is None:
            raise UnknownSession(f"no session {header.session_id:#x}")
        return session

    def open_piece_into(
        self, session: Session, datagram: bytes, header: Header, out: memoryview
    ) -> None:
        """Authenticate a stage piece of `session` (``store.wire.stages``), opening its
        data into `out`. Raises as ``open_request_untrusted``; when it does, `out` holds
        nothing authentic."""
        session.cipher.open_fragment_into(datagram, out, header)
        self._accept(session, header)

    def _accept(self, session: Session, header: Header) -> None:
        """After the tag verified: refuse a replayed seq and a session whose ticket expired."""
        if not session.window.accept(header.seq):
            raise Replayed(f"sequence {header.seq} replayed in session {header.session_id:#x}")
        if session.expires < self._clock():
            del self.sessions[header.session_id]
            raise ExpiredSession(f"session of {session.client!r} expired")

    @staticmethod
    def reset_for(request: Header, epoch: int) -> bytes:
        """RESET datagram telling a client its session is gone (so it says hello again)."""
        body = wire_body.pack({"r": int(Code.EBADSESSION)})
        return encode_unsealed(
            DatagramType.RESET, request.session_id, request.request_id, epoch, body
        )

    def seal_reply(
        self, session: Session, request: Header, epoch: int, reply: dict[str, object]
    ) -> bytes | bytearray:
        return self.seal_packed(session, request, epoch, wire_body.pack(reply))

    def seal_packed(
        self, session: Session, request: Header, epoch: int, packed: bytes
    ) -> bytes | bytearray:
        return session.cipher.seal(
            DatagramType.REPLY,
            session.session_id,
            session.next_seq(),
            request.request_id,
            epoch,
            packed,
            request.encrypted,
        )

    def seal_fragment(
        self,
        session: Session,
        request: Header,
        epoch: int,
        prefix: bytes,
        piece: bytes | bytearray | memoryview,
    ) -> bytes | bytearray:
        """One fragment of a reply (``store.wire.fragments``)."""
        return session.cipher.seal_fragment(
            session.session_id,
            session.next_seq(),
            request.request_id,
            epoch,
            prefix,
            piece,
            request.encrypted,
        )


def drop_reason(exc: ProtocolError) -> str:
    """How a request datagram that failed its checks is counted."""
    if isinstance(exc, BadMAC):
        return "bad_mac"
    if isinstance(exc, Replayed):
        return "replay"
    if isinstance(exc, UnknownSession | ExpiredSession):
        return "unknown_session"
    return "malformed"
