"""Pieces of a staged write: raw data in REQUEST datagrams, each saying where it belongs.

Theory of operation
-------------------
A write larger than one datagram is *staged* with the PG's primary (``store.osd.staging``):
the client cuts an extent of up to 32 MiB into pieces of one datagram each, sends them, and
then commits the extent with one ``staged`` operation. A piece is a REQUEST with the
FRAGMENT flag; a 24-byte prefix in clear after the header says where its data goes:

    header | token u64 | offset u32 | stage size u32 | pool u32 | pg u32 | data | tag

The token names the stage (63 random bits the client picks per attempt), the offset is the
data's place in it and the stage size the whole extent's length; pool and PG are the
object's, so the daemon checks the client's capabilities and that it is the PG's primary
before it holds anything. Header and prefix are the GCM additional data: authenticated,
not encrypted. The data travels raw, never inside msgpack: the primary reads the prefix,
opens the piece straight into its place in the stage's buffer (one decryption, no copy),
and that buffer is what the data file writes.

A piece's bytes are trusted only once its tag verified: a forged datagram can at worst
scribble over a place of a stage no authentic piece has filled yet, and a place once filled
is never opened into again (a piece sent again is opened aside, to check it, and answered
as the first was).

The primary acknowledges the pieces it held together: one REPLY, under the request id of
the latest of them, names them all (``acknowledgement``); a client reads the ids an
answer covers with ``acknowledged``.

Everything here is pure: no sockets, no clock.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from store.errors import MalformedDatagram
from store.wire.datagram import HEADER_SIZE, MAX_DATAGRAM, STAGE_PREFIX_SIZE, TAG_SIZE

PREFIX = struct.Struct("!QIIII")
MAX_TOKEN = (1 << 63) - 1
_U32 = 1 << 32

assert PREFIX.size == STAGE_PREFIX_SIZE

Data = bytes | bytearray | memoryview


class StagePiece(NamedTuple):
    """What a client sends as one piece: the clear prefix and the data (a view, not a copy)."""

    prefix: bytes
    data: Data


class PieceInfo(NamedTuple):
    """What a piece's prefix says: untrusted until the datagram's tag verified."""

    token: int
    offset: int
    size: int  # of the whole stage
    pool: int
    pg: int
    length: int  # bytes of data the datagram carries


def piece_size(datagram_size: int) -> int:
    """Bytes of data carried by one piece datagram of at most `datagram_size` bytes."""
    return min(datagram_size, MAX_DATAGRAM) - HEADER_SIZE - STAGE_PREFIX_SIZE - TAG_SIZE


def stage_piece(token: int, offset: int, size: int, pool: int, pg: int, data: Data) -> StagePiece:
    if not 0 <= token <= MAX_TOKEN:
        raise ValueError(f"a stage token is 0 to 2**63 - 1, not {token}")
    if not (0 < size < _U32 and 0 <= pool < _U32 and 0 <= pg < _U32):
        raise ValueError(f"stage size {size}, pool {pool} or pg {pg} does not fit a prefix")
    if not data or not 0 <= offset <= size - len(data):
        raise ValueError(f"a piece of {len(data)} bytes at {offset} is not within {size}")
    return StagePiece(PREFIX.pack(token, offset, size, pool, pg), data)


def parse_untrusted(datagram: bytes) -> PieceInfo:
    """The prefix of a piece datagram, read before its tag is checked."""
    length = len(datagram) - HEADER_SIZE - STAGE_PREFIX_SIZE - TAG_SIZE
    if length <= 0:
        raise MalformedDatagram(f"stage piece datagram of {len(datagram)} bytes carries no data")
    token, offset, size, pool, pg = PREFIX.unpack_from(datagram, HEADER_SIZE)
    if token > MAX_TOKEN:
        raise MalformedDatagram("stage token out of range")
    if offset + length > size:
        raise MalformedDatagram(
            f"a piece of {length} bytes at {offset} is past its stage of {size}"
        )
    return PieceInfo(token, offset, size, pool, pg, length)


def acknowledgement(request_ids: list[int]) -> dict[str, Any]:
    """The body of the REPLY that acknowledges these held pieces, sealed under the request
    id of the last of them: ``{"r": 0, "ack": [ids]}``, or ``{"r": 0}`` for one alone."""
    return {"r": 0, "ack": request_ids} if len(request_ids) > 1 else {"r": 0}


def acknowledged(reply: dict[Any, Any], request_id: int) -> list[Any]:
    """The request ids a piece's answer (authentic, sealed under ``request_id``) covers;
    not checked to be integers."""
    ids = reply.get("ack")
    return ids if isinstance(ids, list) else [request_id]
