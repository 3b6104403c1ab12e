"""Replies larger than one datagram, sent as fragments, and their reassembly.

Theory of operation
-------------------
A read of 1 MiB used to be seventeen requests, each answered by one datagram. A client
may instead ask for one reply of up to N bytes (``"frag": [N, datagram size]`` in the
request body); the daemon then sends the reply as pieces, each sealed as its own REPLY
datagram with the FRAGMENT flag.

What the pieces carry, joined in index order, is the *packed reply*:

    tail | head | u32 length of head

The tail is the data of the reply's one result, raw; the head is the rest of the reply
map, msgpack, with ``"tail": 0`` saying that ``res[0]`` is the tail (a reply with anything
else than one data result has an empty tail and its whole map as head). Data travels as it
is, never inside msgpack, so neither side copies it to pack or unpack it.

A fragment datagram is the datagram header, a 16-byte prefix in clear, the piece and the
tag:

    header | index u16 | count u16 | version epoch u32 | version seq u64 | piece | tag

Header and prefix are both the GCM additional data: authenticated, not encrypted. Each
piece but the last is exactly ``piece_size`` bytes, so a client that has read the prefix
knows where the piece goes and opens it straight into its place in the reply (one
decryption, no copy). A piece's bytes are trusted only once its tag verified: a forged
datagram can at worst scribble over a place no authentic piece has filled yet, and a place
once filled is never opened into again.

Datagrams get lost, so a client that misses a piece sends the request again and the daemon
serves it again. The second answer may come from a later version of the object, so pieces
are only ever joined with pieces of the same (count, version): the object's version names
its bytes, and a reply computed twice at one version is the same reply. A piece of another
version is opened aside and, once authentic, makes the reassembly start over with it.

Everything here is pure: no sockets, no clock.
"""

from __future__ import annotations

import struct
from typing import Any

from store.errors import MalformedDatagram
from store.malloc import uninitialized
from store.wire import body as wire_body
from store.wire.datagram import FRAGMENT_PREFIX_SIZE, HEADER_SIZE, MAX_DATAGRAM, TAG_SIZE

PREFIX = struct.Struct("!HHIQ")
PREFIX_SIZE = PREFIX.size
TRAILER = struct.Struct("!I")
MAX_FRAGMENTS = 1024  # per reply: 64 MiB of 64 KiB datagrams
TAIL = "tail"  # head key: which result of "res" is the tail
_U32 = 1 << 32
_U64 = 1 << 64

assert PREFIX_SIZE == FRAGMENT_PREFIX_SIZE

Data = bytes | bytearray | memoryview


def piece_size(datagram_size: int) -> int:
    """Bytes of packed reply carried by one fragment datagram of at most `datagram_size`."""
    return min(datagram_size, MAX_DATAGRAM) - HEADER_SIZE - TAG_SIZE - PREFIX_SIZE


def fits(size: int, datagram_size: int) -> bool:
    """Whether a packed reply of `size` bytes can be sent in fragments of that size."""
    piece = piece_size(datagram_size)
    return piece > 0 and -(-size // piece) <= MAX_FRAGMENTS


def reply_parts(body: dict[str, Any]) -> tuple[bytes, Data]:
    """The packed head and the tail of a reply map (see the module's doc)."""
    results = body.get("res")
    if isinstance(results, list) and len(results) == 1:
        data = results[0]
        if isinstance(data, bytes | bytearray | memoryview):
            return wire_body.pack({**body, "res": [None], TAIL: 0}), data
    return wire_body.pack(body), b""


def packed_size(head: bytes, tail: Data) -> int:
    return len(tail) + len(head) + TRAILER.size


def split(
    head: bytes, tail: Data, version: tuple[int, int], datagram_size: int
) -> list[tuple[bytes, Data]]:
    """The (prefix, piece) of each fragment of the reply `tail | head | len(head)` of
    object version `version`. Pieces within the tail are views of it, not copies."""
    size = packed_size(head, tail)
    if not fits(size, datagram_size):
        raise ValueError(
            f"a reply of {size} bytes does not fit {MAX_FRAGMENTS} fragments"
            f" of datagrams of {datagram_size} bytes"
        )
    epoch, seq = version
    if not (0 <= epoch < _U32 and 0 <= seq < _U64):
        raise ValueError(f"version {version!r} does not fit a fragment prefix")
    piece = piece_size(datagram_size)
    count = -(-size // piece)
    view = memoryview(tail)
    rest = head + TRAILER.pack(len(head))  # what follows the tail
    out: list[tuple[bytes, Data]] = []
    for index in range(count):
        start, end = index * piece, min((index + 1) * piece, size)
        prefix = PREFIX.pack(index, count, epoch, seq)
        if end <= len(view):
            out.append((prefix, view[start:end]))
        elif start >= len(view):
            out.append((prefix, rest[start - len(view) : end - len(view)]))
        else:
            out.append((prefix, bytes(view[start:]) + rest[: end - len(view)]))
    return out


class Fragment:
    """What a fragment datagram's clear prefix says: untrusted until the tag verified.
    (A plain class: one is made per datagram, several times faster than a dataclass.)"""

    __slots__ = ("count", "index", "size", "version")

    def __init__(self, index: int, count: int, version: tuple[int, int], size: int) -> None:
        self.index = index
        self.count = count
        self.version = version
        self.size = size  # bytes of piece the datagram carries

    def __repr__(self) -> str:
        return f"Fragment({self.index}/{self.count}, v{self.version}, {self.size} B)"


def parse_untrusted(datagram: bytes) -> Fragment:
    """The prefix of a fragment datagram, read before its tag is checked."""
    size = len(datagram) - HEADER_SIZE - PREFIX_SIZE - TAG_SIZE
    if size < 0:
        raise MalformedDatagram(f"fragment datagram of {len(datagram)} bytes is too short")
    index, count, epoch, seq = PREFIX.unpack_from(datagram, HEADER_SIZE)
    if not 0 < count <= MAX_FRAGMENTS or index >= count:
        raise MalformedDatagram(f"fragment {index} of {count} is out of range")
    return Fragment(index, count, (epoch, seq), size)


class Reassembly:
    """Collects the fragments of one reply, bounded by the size the client asked for.

    For each fragment: ``target`` says where to open its piece, the caller opens it there
    (checking its tag), then hands it to ``add``."""

    __slots__ = ("_filled", "_key", "_last", "_whole", "limit", "piece")

    def __init__(self, limit: int, piece: int) -> None:
        self.limit = limit  # the most reply bytes this request accepts
        self.piece = piece  # bytes of every piece but the last (from the datagram size)
        self._key: tuple[int, tuple[int, int]] | None = None
        self._whole = bytearray()
        self._filled: set[int] = set()
        self._last = 0  # size of the last piece, once held

    @property
    def received(self) -> int:
        """Distinct pieces held for the current version."""
        return len(self._filled)

    def target(self, fragment: Fragment) -> memoryview | None:
        """Where to open `fragment`'s piece: its place in the reply; a buffer aside when it
        is of another version than the pieces held (they stay until it proves authentic);
        None for a piece already held (drop it unopened).

        Raises MalformedDatagram for fragments that cannot belong to an honest reply
        within the limit; nothing changes before the tag is checked."""
        index, count, size = fragment.index, fragment.count, fragment.size
        if size > self.piece or (index < count - 1 and size != self.piece):
            raise MalformedDatagram(f"fragment {index} of {count} carries {size} bytes")
        if (count - 1) * self.piece + (size if index == count - 1 else 1) > self.limit:
            raise MalformedDatagram(f"fragmented reply larger than the {self.limit} bytes asked")
        if (count, fragment.version) != self._key:
            return memoryview(bytearray(size))
        if index in self._filled:
            return None
        start = index * self.piece
        return memoryview(self._whole)[start : start + size]

    def add(self, fragment: Fragment, opened: memoryview) -> dict[Any, Any] | None:
        """Take an authentic fragment, opened into what ``target`` gave; the reply map
        (its tail in place) once the last piece is in, else None."""
        key = (fragment.count, fragment.version)
        with opened:
            if key != self._key:  # another version: start over with this piece
                self._key, self._filled = key, set()
                self._whole = uninitialized(fragment.count * self.piece)
                start = fragment.index * self.piece
                self._whole[start : start + fragment.size] = opened
        self._filled.add(fragment.index)
        if fragment.index == fragment.count - 1:
            self._last = fragment.size
        if len(self._filled) < fragment.count:
            return None
        whole, size = self._whole, (fragment.count - 1) * self.piece + self._last
        self._key, self._whole, self._filled = None, bytearray(), set()
        return _unpack(whole, size, self.limit)


def _unpack(whole: bytearray, size: int, limit: int) -> dict[Any, Any]:
    """The reply map of a packed reply held in the first `size` bytes of `whole`."""
    if size < TRAILER.size:
        raise MalformedDatagram("fragmented reply shorter than its trailer")
    (head_size,) = TRAILER.unpack_from(whole, size - TRAILER.size)
    tail_size = size - TRAILER.size - head_size
    if tail_size < 0:
        raise MalformedDatagram("fragmented reply with a head longer than itself")
    reply = wire_body.unpack_untrusted(bytes(whole[tail_size : size - TRAILER.size]), limit)
    if TAIL in reply:
        results = reply.get("res")
        if reply[TAIL] != 0 or not isinstance(results, list) or len(results) != 1:
            raise MalformedDatagram("fragmented reply's tail has no place in its head")
        del reply[TAIL]
        del whole[tail_size:]  # the tail becomes the data, in place
        results[0] = whole
    elif tail_size:
        raise MalformedDatagram("fragmented reply with a tail its head does not name")
    return reply
