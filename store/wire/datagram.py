"""Datagrams between clients and storage daemons: header, sealing, keys.

Theory of operation
-------------------
Every UDP datagram starts with a fixed 36-byte header in clear (magic, version, type, flags,
session id, seq, request id, epoch), so a daemon can find the session of a datagram before it
knows which key opens it. Three types are *unsealed* (HELLO, HELLO_REPLY, RESET): header plus a
msgpack body and nothing else; the hello body carries its own MAC from the auth layer, and a
RESET only ever says "I do not know that session", which an attacker could say anyway.

REQUEST and REPLY are *sealed* with AES-256-GCM. The whole header is additional authenticated
data, so no header bit can be changed without the tag failing. With the ENCRYPTED flag the body
is ciphertext; without it the body travels readable and the tag is computed over header + body
(GCM with an empty plaintext is GMAC), which keeps bulk data readable for pools that want
integrity without secrecy. The nonce is 4 zero bytes + seq (u64 BE). A REPLY with the
FRAGMENT flag has 16 more bytes in clear after the header, authenticated with it, that say
where its piece goes (``store.wire.fragments``): ``seal_fragment`` and ``open_fragment_into``.

GCM dies of nonce reuse, so each direction of each session has its own key, derived with HKDF
from the session key, both hello nonces and the daemon id: the client only ever seals with
``client_to_server`` and the daemon with ``server_to_client``, and each side numbers its own
datagrams 1, 2, 3... within a session, never reusing a seq. Sequence numbers double as the
anti-replay counter (see ``store.wire.replay``); this module only authenticates.

A client seals only REQUESTs and a daemon only REPLYs; anything else is rejected when opened,
so a datagram can never be reflected back at its sender as if it came from the other side.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from store.errors import BadMAC, MalformedDatagram
from store.malloc import uninitialized

MAGIC = b"SD"
VERSION = 4  # 2: fragment prefixes in clear; 3: stage pieces; 4: pieces acknowledged together
HEADER_SIZE = 36
TAG_SIZE = 16
KEY_SIZE = 32
# The largest UDP payload over IPv4 (65535 - 8 byte UDP header - 20 byte IP header).
MAX_DATAGRAM = 65507

FLAG_ENCRYPTED = 0x01
FLAG_FRAGMENT = 0x02  # one piece of a larger reply, or of a staged write
FRAGMENT_PREFIX_SIZE = 16  # in clear after a REPLY fragment's header (store.wire.fragments)
STAGE_PREFIX_SIZE = 24  # in clear after a REQUEST fragment's header (store.wire.stages)
_KNOWN_FLAGS = FLAG_ENCRYPTED | FLAG_FRAGMENT
_U32 = 1 << 32
_U64 = 1 << 64

_HEADER = struct.Struct("!2sBBBBHQQQI")
_NONCE = struct.Struct("!4xQ")
_KEY_INFO = b"store datagram v1"

assert _HEADER.size == HEADER_SIZE


class DatagramType(IntEnum):
    HELLO = 1
    HELLO_REPLY = 2
    REQUEST = 3
    REPLY = 4
    RESET = 5


_TYPES = {kind.value: kind for kind in DatagramType}
UNSEALED_TYPES = frozenset({DatagramType.HELLO, DatagramType.HELLO_REPLY, DatagramType.RESET})
SEALED_TYPES = frozenset({DatagramType.REQUEST, DatagramType.REPLY})


class Header(NamedTuple):
    # A tuple: one is parsed for every datagram, and a frozen dataclass costs several
    # times more to make.
    type: DatagramType
    flags: int
    session_id: int
    seq: int
    request_id: int
    epoch: int

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    @property
    def fragment(self) -> bool:
        return bool(self.flags & FLAG_FRAGMENT)

    @property
    def sealed(self) -> bool:
        return self.type in SEALED_TYPES


def _pack_header(
    type: DatagramType, flags: int, session_id: int, seq: int, request_id: int, epoch: int
) -> bytes:
    if not 0 < session_id < _U64:
        raise ValueError(f"session_id must be a non-zero u64, got {session_id}")
    if not 0 <= seq < _U64:
        raise ValueError(f"seq must be a u64, got {seq}")
    if not 0 <= request_id < _U64:
        raise ValueError(f"request_id must be a u64, got {request_id}")
    if not 0 <= epoch < _U32:
        raise ValueError(f"epoch must be a u32, got {epoch}")
    return _HEADER.pack(MAGIC, VERSION, type, flags, 0, 0, session_id, seq, request_id, epoch)


def parse_header_untrusted(data: bytes) -> Header:
    """Parse the clear header at the front of ``data``; the rest is not looked at."""
    if len(data) < HEADER_SIZE:
        raise MalformedDatagram(f"datagram of {len(data)} bytes is shorter than a header")
    magic, version, raw_type, flags, reserved8, reserved16, session_id, seq, request_id, epoch = (
        _HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise MalformedDatagram(f"bad magic {magic!r}")
    if version != VERSION:
        raise MalformedDatagram(f"unknown datagram version {version}")
    type = _TYPES.get(raw_type)
    if type is None:
        raise MalformedDatagram(f"unknown datagram type {raw_type}")
    if flags & ~_KNOWN_FLAGS:
        raise MalformedDatagram(f"unknown flags {flags:#04x}")
    if reserved8 or reserved16:
        raise MalformedDatagram("reserved header bits are set")
    if session_id == 0:
        raise MalformedDatagram("session id 0")
    return Header(type, flags, session_id, seq, request_id, epoch)


def encode_unsealed(
    type: DatagramType, session_id: int, request_id: int, epoch: int, body: bytes
) -> bytes:
    """HELLO, HELLO_REPLY or RESET: header (seq 0, no flags) + body, no tag."""
    if type not in UNSEALED_TYPES:
        raise ValueError(f"{DatagramType(type).name} datagrams must be sealed")
    header = _pack_header(type, 0, session_id, 0, request_id, epoch)
    if HEADER_SIZE + len(body) > MAX_DATAGRAM:
        raise ValueError(f"body of {len(body)} bytes does not fit in a datagram")
    return header + body


def open_unsealed_untrusted(data: bytes) -> tuple[Header, bytes]:
    """Split an unsealed datagram into header and body. Nothing here is authenticated."""
    header = parse_header_untrusted(data)
    if header.type not in UNSEALED_TYPES:
        raise MalformedDatagram(f"{header.type.name} datagram must be opened with a session key")
    if len(data) > MAX_DATAGRAM:
        raise MalformedDatagram(f"datagram of {len(data)} bytes is too long")
    # Unsealed datagrams have no use for these fields; requiring them zero leaves an
    # unauthenticated datagram fewer bits to play with.
    if header.flags or header.seq:
        raise MalformedDatagram("unsealed datagram with flags or seq set")
    return header, data[HEADER_SIZE:]


@dataclass(frozen=True, slots=True)
class DatagramKeys:
    client_to_server: bytes
    server_to_client: bytes

    def __post_init__(self) -> None:
        if len(self.client_to_server) != KEY_SIZE or len(self.server_to_client) != KEY_SIZE:
            raise ValueError(f"datagram keys are {KEY_SIZE} bytes each")

    def __repr__(self) -> str:
        # Keys must not end up in logs through a stray repr().
        return "DatagramKeys(<secret>)"


def derive_datagram_keys(
    session_key: bytes, client_nonce: bytes, server_nonce: bytes, osd_id: int
) -> DatagramKeys:
    """Both directional keys of one client session with one daemon (HKDF-SHA256)."""
    if not 0 <= osd_id < _U32:
        raise ValueError(f"osd_id must be a u32, got {osd_id}")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=2 * KEY_SIZE,
        salt=client_nonce + server_nonce,
        info=_KEY_INFO + osd_id.to_bytes(4, "big"),
    )
    okm = hkdf.derive(session_key)
    return DatagramKeys(client_to_server=okm[:KEY_SIZE], server_to_client=okm[KEY_SIZE:])


class DatagramCipher:
    """Seals the datagrams one side sends and opens those it receives, for one session.

    Stateless apart from the keys: choosing a fresh seq for ``seal`` and rejecting replays
    after ``open_untrusted`` are the caller's job.
    """

    __slots__ = ("_open_aead", "_receive_type", "_seal_aead", "_send_type")

    def __init__(self, keys: DatagramKeys, role: Literal["client", "server"]) -> None:
        if role == "client":
            send_key, receive_key = keys.client_to_server, keys.server_to_client
            self._send_type, self._receive_type = DatagramType.REQUEST, DatagramType.REPLY
        elif role == "server":
            send_key, receive_key = keys.server_to_client, keys.client_to_server
            self._send_type, self._receive_type = DatagramType.REPLY, DatagramType.REQUEST
        else:
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        self._seal_aead = AESGCM(send_key)
        self._open_aead = AESGCM(receive_key)

    def seal(
        self,
        type: DatagramType,
        session_id: int,
        seq: int,
        request_id: int,
        epoch: int,
        body: bytes | memoryview,
        encrypt: bool,
    ) -> bytes | bytearray:
        if type != self._send_type:
            raise ValueError(f"this side seals only {self._send_type.name} datagrams")
        header = self._header(type, 0, session_id, seq, request_id, epoch, encrypt)
        return self._seal(header, seq, body, encrypt)

    def seal_fragment(
        self,
        session_id: int,
        seq: int,
        request_id: int,
        epoch: int,
        prefix: bytes,
        piece: bytes | bytearray | memoryview,
        encrypt: bool,
    ) -> bytes | bytearray:
        """A datagram with FRAGMENT: header and `prefix` in clear, both authenticated, then
        the piece. A daemon sends pieces of replies, a client pieces of staged writes."""
        want = _prefix_size(self._send_type)
        if len(prefix) != want:
            raise ValueError(
                f"a {self._send_type.name} fragment's prefix is {want} bytes, not {len(prefix)}"
            )
        header = self._header(
            self._send_type, FLAG_FRAGMENT, session_id, seq, request_id, epoch, encrypt
        )
        return self._seal(header + prefix, seq, piece, encrypt)

    def _header(
        self,
        type: DatagramType,
        flags: int,
        session_id: int,
        seq: int,
        request_id: int,
        epoch: int,
        encrypt: bool,
    ) -> bytes:
        if seq == 0:
            raise ValueError("seq 0 is not valid in a sealed datagram")
        flags |= FLAG_ENCRYPTED if encrypt else 0
        return _pack_header(type, flags, session_id, seq, request_id, epoch)

    def _seal(
        self, clear: bytes, seq: int, body: bytes | bytearray | memoryview, encrypt: bool
    ) -> bytes | bytearray:
        """`clear` (header, and a fragment's prefix) authenticated, then `body`, then the tag."""
        if len(clear) + len(body) + TAG_SIZE > MAX_DATAGRAM:
            raise ValueError(f"body of {len(body)} bytes does not fit in a sealed datagram")
        nonce = _NONCE.pack(seq)
        if encrypt:
            # Clear part, ciphertext and tag in one buffer: no copy of the body after sealing.
            sealed = uninitialized(len(clear) + len(body) + TAG_SIZE)
            sealed[: len(clear)] = clear
            with memoryview(sealed) as view:
                self._seal_aead.encrypt_into(nonce, body, clear, view[len(clear) :])
            return sealed
        authenticated = clear + body
        return authenticated + self._seal_aead.encrypt(nonce, b"", authenticated)

    def open_untrusted(self, data: bytes, header: Header | None = None) -> tuple[Header, bytes]:
        """Verify a received datagram and return its header and (decrypted) body. A caller
        that has parsed the header of `data` already passes it (it runs per datagram)."""
        header = self._check(data, HEADER_SIZE, header)
        if header.fragment:
            raise MalformedDatagram("a fragment opened as a whole datagram")
        nonce, size = _NONCE.pack(header.seq), len(data)
        # Views, not slices: the body can be most of 64 KiB and this runs per datagram.
        view = memoryview(data)
        try:
            if header.encrypted:
                body = self._open_aead.decrypt(nonce, view[HEADER_SIZE:], view[:HEADER_SIZE])
            else:
                self._open_aead.decrypt(nonce, view[size - TAG_SIZE :], view[: size - TAG_SIZE])
                body = bytes(view[HEADER_SIZE : size - TAG_SIZE])
        except InvalidTag:
            raise _bad_mac(header) from None
        return header, body

    def open_fragment_into(
        self, data: bytes, out: memoryview, header: Header | None = None
    ) -> Header:
        """Verify a received fragment datagram and put its (decrypted) piece into `out`,
        which must be exactly the piece's size. When the tag fails, `out` may have been
        written to all the same: it holds nothing authentic. `header` as for
        ``open_untrusted``."""
        clear = HEADER_SIZE + _prefix_size(self._receive_type)
        header = self._check(data, clear, header)
        if not header.fragment:
            raise MalformedDatagram("a whole datagram opened as a fragment")
        size = len(data)
        if len(out) != size - clear - TAG_SIZE:
            raise ValueError("the piece does not fit where it is to be opened")
        nonce = _NONCE.pack(header.seq)
        view = memoryview(data)
        try:
            if header.encrypted:
                self._open_aead.decrypt_into(nonce, view[clear:], view[:clear], out)
            else:
                self._open_aead.decrypt(nonce, view[size - TAG_SIZE :], view[: size - TAG_SIZE])
                out[:] = view[clear : size - TAG_SIZE]
        except InvalidTag:
            raise _bad_mac(header) from None
        return header

    def _check(self, data: bytes, clear: int, header: Header | None) -> Header:
        """The header of a sealed datagram with `clear` bytes before its body, checked."""
        if header is None:
            header = parse_header_untrusted(data)
        if header.type != self._receive_type:
            raise MalformedDatagram(f"unexpected {header.type.name} datagram in this direction")
        size = len(data)
        if size < clear + TAG_SIZE:
            raise MalformedDatagram(f"sealed datagram of {size} bytes has no room for a tag")
        if size > MAX_DATAGRAM:
            raise MalformedDatagram(f"datagram of {size} bytes is too long")
        if header.seq == 0:
            raise MalformedDatagram("seq 0 in a sealed datagram")
        return header


def _prefix_size(type: DatagramType) -> int:
    """Bytes of clear prefix after the header of a fragment of this type."""
    return FRAGMENT_PREFIX_SIZE if type == DatagramType.REPLY else STAGE_PREFIX_SIZE


def _bad_mac(header: Header) -> BadMAC:
    return BadMAC(f"datagram seq {header.seq} of session {header.session_id:#x} failed its tag")
