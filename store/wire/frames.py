"""Length-prefixed msgpack frames for the TCP (TLS) links: daemon <-> daemon, anyone <-> master.

A frame is a u32 BE payload length followed by one msgpack object. ``FrameDecoder`` is fed
whatever the stream delivers and hands out whole frames. It keeps the pieces it was fed as
they came, with a read offset into the first: a frame inside one piece is decoded where it
lies, and a frame spread over several is joined once, when its last byte has arrived, so
every byte is copied at most once however the stream is split (growing one buffer piece by
piece copied a 4 MiB frame several times over as the buffer was reallocated).

``next_frame`` answers None for "no whole frame yet", so a frame may not carry msgpack nil at
its top level: ``encode_frame(None)`` is refused and a received nil frame is a ``FrameError``.

A frame may carry a *raw tail*: bytes after its msgpack object that are never packed or
unpacked (the data of a replicated write). Its length word has the top bit set, and its
payload is a u32 BE length of the msgpack part, that part, then the tail::

    u32 (0x80000000 | payload length) | u32 head length | head (msgpack) | tail

``next_frame`` answers such a frame as a :class:`Tailed`: the object, and the tail as a
read-only view of the bytes received (no copy).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple, cast

import msgpack

from store.errors import FrameError
from store.malloc import page_aligned, uninitialized

DEFAULT_MAX_FRAME = 64 * 1024 * 1024
LARGE_FRAME = 1024 * 1024  # frames this large are received in place (FrameDecoder.reserve)

_LENGTH = struct.Struct("!I")
TAIL_FLAG = 1 << 31  # in the length word: the payload ends with a raw tail
_MAX_LENGTH = TAIL_FLAG - 1

Data = bytes | bytearray | memoryview


class Tailed(NamedTuple):
    """A frame that carried a raw tail."""

    obj: Any
    tail: memoryview


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


def encode_request(
    req_id: int, op: str, packed_args: bytes, tail: Sequence[Data] = ()
) -> tuple[Data, ...]:
    """The frame of ``{"t": "req", "id": req_id, "op": op, "a": args}`` whose arguments
    were packed already, as parts to send one after the other: its head (length prefix
    and all before the arguments), the packed arguments themselves, and the pieces of its
    raw ``tail`` if it has one. The same large arguments or tail go to several peers
    without being packed or copied again."""
    head = msgpack.packb({"t": "req", "id": req_id, "op": op}, use_bin_type=True)
    assert head[0] == 0x83  # a fixmap of three: made one of four by the "a" that follows
    head = b"\x84" + head[1:] + msgpack.packb("a")
    length = len(head) + len(packed_args)
    if not tail:
        if length > _MAX_LENGTH:
            raise ValueError(f"frame payload of {length} bytes exceeds the u32 length")
        return _LENGTH.pack(length) + head, packed_args
    total = _LENGTH.size + length + sum(len(piece) for piece in tail)
    if total > _MAX_LENGTH:
        raise ValueError(f"frame payload of {total} bytes exceeds the limit")
    prefix = _LENGTH.pack(TAIL_FLAG | total) + _LENGTH.pack(length)
    return (prefix + head, packed_args, *tail)


def _join(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(parts)


def _frame_buffer(total: int, tail_start: int | None) -> memoryview:
    """A buffer for a frame of ``total`` bytes; if ``tail_start`` is given, placed so that
    the tail starts on a page boundary, where a daemon can write it to disk with O_DIRECT
    as it is (``BlockSpace``), without copying it to an aligned buffer first."""
    if tail_start is None:
        return memoryview(uninitialized(total))
    return page_aligned(total, tail_start)


class FrameDecoder:
    """Whole frames out of the bytes of a stream (see the module's notes).

    Bytes come in two ways. ``feed`` hands over whatever the stream delivered. A reader
    that can receive into a buffer asks ``reserve`` first: when the next frame is a large
    one (``LARGE_FRAME`` bytes or more) not yet whole, it answers the place in a buffer of
    the frame's size where its remaining bytes go, and the reader says with ``filled``
    how many it put there. Such a frame is neither joined from pieces nor copied again.
    """

    __slots__ = ("_head", "_large", "_large_got", "_limits", "_pieces", "_size", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 < max_frame <= _MAX_LENGTH:
            raise ValueError(f"max_frame must be in 1..{_MAX_LENGTH}, got {max_frame}")
        self.max_frame = max_frame
        self._pieces: deque[bytes] = deque()
        self._head = 0  # bytes of the first piece already consumed
        self._size = 0  # bytes in the pieces not yet consumed
        self._large: memoryview | None = None  # the next frame, being received in place
        self._large_got = 0  # bytes of it received
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
        return self._size + self._large_got

    @property
    def held(self) -> int:
        """Bytes of memory the pieces hold, consumed ones included."""
        large = len(self._large) if self._large is not None else 0
        return large + sum(len(piece) for piece in self._pieces)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        large = self._large
        if large is not None and self._large_got < len(large):
            take = min(len(large) - self._large_got, len(data))
            large[self._large_got : self._large_got + take] = data[:take]
            self._large_got += take
            data = data[take:]
            if not data:
                return
        # A caller may reuse its buffer: only bytes are kept as they are.
        piece = data if isinstance(data, bytes) else bytes(data)
        self._pieces.append(piece)
        self._size += len(piece)

    def reserve(self) -> memoryview | None:
        """Where to receive the rest of the next frame into, if it is a large one not yet
        whole; None if bytes should be fed as they come. Raises ``FrameError`` as
        ``next_frame`` does for a frame over the limit."""
        large = self._large
        if large is None:
            if self._size < _LENGTH.size:
                return None
            total = _LENGTH.size + self._length(self._peek(_LENGTH.size))
            if total < LARGE_FRAME or self._size >= total:
                return None
            large = self._large = _frame_buffer(total, self._tail_start())
            got = 0
            at = self._head
            for piece in self._pieces:
                large[got : got + len(piece) - at] = memoryview(piece)[at:]
                got += len(piece) - at
                at = 0
            self._pieces.clear()
            self._head = self._size = 0
            self._large_got = got
        elif self._large_got == len(large):
            return None
        return memoryview(large)[self._large_got :]

    def _tail_start(self) -> int | None:
        """Where the next frame's tail starts in it, if it has one and that is known."""
        if self._size < 2 * _LENGTH.size:
            return None
        word, head_length = struct.unpack("!II", self._peek(2 * _LENGTH.size))
        return 2 * _LENGTH.size + head_length if word & TAIL_FLAG else None

    def filled(self, count: int) -> None:
        """``count`` bytes were received into the place ``reserve`` answered."""
        assert self._large is not None and 0 <= count <= len(self._large) - self._large_got
        self._large_got += count

    def next_frame(self) -> object | None:
        """The next whole frame's object, or None until more bytes arrive.

        Raises ``FrameError`` for a frame over ``max_frame`` or a payload that is not exactly
        one msgpack object; the stream cannot be resynchronised after that, so close it.
        """
        large = self._large
        if large is not None:
            if self._large_got < len(large):
                return None
            self._large, self._large_got = None, 0
            (word,) = _LENGTH.unpack_from(large, 0)
            return self._decode(large, 0, word)
        if self._size < _LENGTH.size:
            return None
        word = self._peek(_LENGTH.size)
        total = _LENGTH.size + self._length(word)
        if self._size < total:
            return None
        first = self._first(total)
        obj = self._decode(first, self._head, _LENGTH.unpack(word)[0])
        self._size -= total
        self._head += total
        if self._head == len(first):
            self._pieces.popleft()
            self._head = 0
        return obj

    def _length(self, word: bytes) -> int:
        length = cast(int, _LENGTH.unpack(word)[0]) & ~TAIL_FLAG
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        return length

    def _decode(self, buffer: bytes | memoryview, at: int, word: int) -> object:
        """The frame at ``at`` of ``buffer``, whose length word is ``word``."""
        start = at + _LENGTH.size
        end = start + (word & ~TAIL_FLAG)
        tail: memoryview | None = None
        if word & TAIL_FLAG:
            if end - start < _LENGTH.size:
                raise FrameError("a frame with a tail is too short to say its head's length")
            (head_length,) = _LENGTH.unpack_from(buffer, start)
            start += _LENGTH.size
            if head_length > end - start:
                raise FrameError(f"a frame's head of {head_length} bytes overruns the frame")
            tail = memoryview(buffer)[start + head_length : end].toreadonly()
            end = start + head_length
        with memoryview(buffer) as whole, whole[start:end] as payload:
            try:
                obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, **self._limits)
            except (ValueError, TypeError) as e:
                raise FrameError(f"undecodable frame payload: {e}") from None
        if obj is None:
            raise FrameError("frame carries nil, which no sender may send")
        return obj if tail is None else Tailed(obj, tail)

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
