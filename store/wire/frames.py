"""Length-prefixed msgpack frames for the TCP (TLS) links: daemon <-> daemon, anyone <-> master.

A frame is a u32 BE payload length followed by one msgpack object. ``FrameDecoder`` is fed
whatever the stream delivers and hands out whole frames. It keeps the pieces it was fed as
they came, with a read offset into the first: a frame inside one piece is decoded where it
lies, and a frame spread over several is joined once, when its last byte has arrived, so
every byte is copied at most once however the stream is split (growing one buffer piece by
piece copied a 4 MiB frame several times over as the buffer was reallocated).

``next_frame`` answers None for "no whole frame yet", so a frame may not carry msgpack nil at
its top level: ``encode_frame(None)`` is refused and a received nil frame is a ``FrameError``.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import Any

import msgpack

from store.errors import FrameError

DEFAULT_MAX_FRAME = 64 * 1024 * 1024

_LENGTH = struct.Struct("!I")
_MAX_LENGTH = (1 << 32) - 1


def encode_frame(obj: object) -> bytes:
    if obj is None:
        raise ValueError("a frame cannot carry None: the decoder uses it for 'incomplete'")
    payload = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > _MAX_LENGTH:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds the u32 length")
    return _LENGTH.pack(len(payload)) + payload


def pack_args(args: dict[str, Any]) -> bytes:
    """A request's arguments packed once, for :func:`encode_request` to several peers."""
    return msgpack.packb(args, use_bin_type=True)


def encode_request(req_id: int, op: str, packed_args: bytes) -> tuple[bytes, bytes]:
    """The frame of ``{"t": "req", "id": req_id, "op": op, "a": args}`` whose arguments
    were packed already, as two parts to send one after the other: its head (length
    prefix and all before the arguments) and the packed arguments themselves, so the same
    large arguments go to several peers without being packed or copied again."""
    head = msgpack.packb({"t": "req", "id": req_id, "op": op}, use_bin_type=True)
    assert head[0] == 0x83  # a fixmap of three: made one of four by the "a" that follows
    head = b"\x84" + head[1:] + msgpack.packb("a")
    length = len(head) + len(packed_args)
    if length > _MAX_LENGTH:
        raise ValueError(f"frame payload of {length} bytes exceeds the u32 length")
    return _LENGTH.pack(length) + head, packed_args


def _join(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(parts)


class FrameDecoder:
    __slots__ = ("_head", "_limits", "_pieces", "_size", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 < max_frame <= _MAX_LENGTH:
            raise ValueError(f"max_frame must be in 1..{_MAX_LENGTH}, got {max_frame}")
        self.max_frame = max_frame
        self._pieces: deque[bytes] = deque()
        self._head = 0  # bytes of the first piece already consumed
        self._size = 0  # bytes fed and not yet consumed
        # Cap every container and string at what a frame could hold, so a small header that
        # claims a billion elements is refused before anything is allocated for it.
        self._limits = {
            "max_str_len": max_frame,
            "max_bin_len": max_frame,
            "max_array_len": max_frame,
            "max_map_len": max_frame // 2,
            "max_ext_len": max_frame,
        }

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._size

    @property
    def held(self) -> int:
        """Bytes of memory the pieces hold, consumed ones included."""
        return sum(len(piece) for piece in self._pieces)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        # A caller may reuse its buffer: only bytes are kept as they are.
        piece = data if isinstance(data, bytes) else bytes(data)
        self._pieces.append(piece)
        self._size += len(piece)

    def next_frame(self) -> object | None:
        """The next whole frame's object, or None until more bytes arrive.

        Raises ``FrameError`` for a frame over ``max_frame`` or a payload that is not exactly
        one msgpack object; the stream cannot be resynchronised after that, so close it.
        """
        if self._size < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack(self._peek(_LENGTH.size))
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        total = _LENGTH.size + length
        if self._size < total:
            return None
        first = self._first(total)
        start = self._head + _LENGTH.size
        with memoryview(first) as whole, whole[start : start + length] as payload:
            try:
                obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, **self._limits)
            except (ValueError, TypeError) as e:
                raise FrameError(f"undecodable frame payload: {e}") from None
        if obj is None:
            raise FrameError("frame carries nil, which no sender may send")
        self._size -= total
        self._head += total
        if self._head == len(first):
            self._pieces.popleft()
            self._head = 0
        return obj

    def _peek(self, want: int) -> bytes:
        """The next `want` bytes (there are that many), consuming nothing and joining
        no pieces: a length prefix split between pieces costs no copy of them."""
        first = self._pieces[0]
        if len(first) - self._head >= want:
            return first[self._head : self._head + want]
        out = b""
        at = self._head
        for piece in self._pieces:
            out += piece[at : at + want - len(out)]
            at = 0
            if len(out) == want:
                break
        return out

    def _first(self, want: int) -> bytes:
        """The first piece, after joining as many pieces to it as make `want` bytes
        from the read offset (there are that many)."""
        pieces = self._pieces
        first = pieces[0]
        if len(first) - self._head >= want:
            return first
        parts: list[bytes | memoryview] = [memoryview(first)[self._head :]]
        got = len(parts[0])
        pieces.popleft()
        while got < want:
            piece = pieces.popleft()
            parts.append(piece)
            got += len(piece)
        joined = _join(parts)
        pieces.appendleft(joined)
        self._head = 0
        return joined
