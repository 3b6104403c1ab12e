"""Replies larger than one datagram, sent as fragments, and their reassembly.

Theory of operation
-------------------
A read of 1 MiB used to be seventeen requests, each answered by one datagram. A client
may instead ask for one reply of up to N bytes (``"frag": [N, datagram size]`` in the
request body): the daemon packs the reply once, cuts it into pieces that each fit the
client's datagram size, and seals each piece as its own REPLY datagram with the FRAGMENT
flag. The body of such a datagram is a 16-byte prefix and a piece of the packed reply:

    index u16 | count u16 | version epoch u32 | version seq u64 | piece

Pieces joined in index order are exactly the reply body a single datagram would have
carried (one msgpack map).

Datagrams get lost, so a client that misses a piece sends the request again and the daemon
serves it again. The second answer may come from a later version of the object, so pieces
are only ever joined with pieces of the same (count, version): the object's version names
its bytes, and a reply computed twice at one version is the same reply. A piece of another
version makes the reassembly start over with that version.

Everything here is pure: no sockets, no clock.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from store.errors import MalformedDatagram
from store.wire.datagram import HEADER_SIZE, MAX_DATAGRAM, TAG_SIZE

PREFIX = struct.Struct("!HHIQ")
PREFIX_SIZE = PREFIX.size
MAX_FRAGMENTS = 1024  # per reply: 64 MiB of 64 KiB datagrams
_U32 = 1 << 32
_U64 = 1 << 64

assert PREFIX_SIZE == 16


def piece_size(datagram_size: int) -> int:
    """Bytes of packed reply carried by one fragment datagram of at most `datagram_size`."""
    return min(datagram_size, MAX_DATAGRAM) - HEADER_SIZE - TAG_SIZE - PREFIX_SIZE


def fits(size: int, datagram_size: int) -> bool:
    """Whether a packed reply of `size` bytes can be sent in fragments of that size."""
    piece = piece_size(datagram_size)
    return piece > 0 and -(-size // piece) <= MAX_FRAGMENTS


def split(packed: bytes, version: tuple[int, int], datagram_size: int) -> list[bytes]:
    """The fragment bodies of the packed reply `packed` of object version `version`."""
    if not fits(len(packed), datagram_size):
        raise ValueError(
            f"a reply of {len(packed)} bytes does not fit {MAX_FRAGMENTS} fragments"
            f" of datagrams of {datagram_size} bytes"
        )
    size = piece_size(datagram_size)
    count = max(1, -(-len(packed) // size))
    epoch, seq = version
    if not (0 <= epoch < _U32 and 0 <= seq < _U64):
        raise ValueError(f"version {version!r} does not fit a fragment prefix")
    view = memoryview(packed)
    return [
        PREFIX.pack(index, count, epoch, seq) + view[index * size : (index + 1) * size]
        for index in range(count)
    ]


@dataclass(frozen=True, slots=True)
class Fragment:
    index: int
    count: int
    version: tuple[int, int]
    piece: bytes | memoryview  # a view into the datagram's body: no copy until joined


def parse_untrusted(body: bytes) -> Fragment:
    if len(body) < PREFIX_SIZE:
        raise MalformedDatagram(f"fragment of {len(body)} bytes is shorter than its prefix")
    index, count, epoch, seq = PREFIX.unpack_from(body)
    if not 0 < count <= MAX_FRAGMENTS or index >= count:
        raise MalformedDatagram(f"fragment {index} of {count} is out of range")
    return Fragment(index, count, (epoch, seq), memoryview(body)[PREFIX_SIZE:])


class Reassembly:
    """Collects the fragments of one reply, bounded by the size the client asked for."""

    __slots__ = ("_key", "_pieces", "_size", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # the most reply bytes this request accepts
        self._key: tuple[int, tuple[int, int]] | None = None
        self._pieces: dict[int, bytes | memoryview] = {}
        self._size = 0

    @property
    def received(self) -> int:
        """Distinct pieces held for the current version."""
        return len(self._pieces)

    def add(self, fragment: Fragment) -> bytes | None:
        """Take one fragment; the whole packed reply once its last piece is in, else None.

        Raises MalformedDatagram for fragments that cannot belong to an honest reply
        within the limit (the datagram is authenticated, so this is a daemon's bug)."""
        key = (fragment.count, fragment.version)
        if key != self._key:
            self._key, self._pieces, self._size = key, {}, 0
        if fragment.index in self._pieces:
            return None  # a duplicate (the request was served twice)
        self._size += len(fragment.piece)
        if self._size > self.limit:
            self._key, self._pieces, self._size = None, {}, 0
            raise MalformedDatagram(f"fragmented reply larger than the {self.limit} bytes asked")
        self._pieces[fragment.index] = fragment.piece
        if len(self._pieces) < fragment.count:
            return None
        whole = b"".join(self._pieces[i] for i in range(fragment.count))
        self._key, self._pieces, self._size = None, {}, 0
        return whole
