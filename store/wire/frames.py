"""Length-prefixed msgpack frames for the TCP (TLS) links: daemon <-> daemon, anyone <-> master.

A frame is a u32 BE payload length followed by one msgpack object. ``FrameDecoder`` is fed
whatever the stream delivers and hands out whole frames; it keeps one growing buffer and a read
offset, and drops the consumed front only once it is at least half the buffer, so buffering
costs amortised O(1) per byte however the stream is split.

``next_frame`` answers None for "no whole frame yet", so a frame may not carry msgpack nil at
its top level: ``encode_frame(None)`` is refused and a received nil frame is a ``FrameError``.
"""

from __future__ import annotations

import struct

import msgpack

from store.errors import FrameError

DEFAULT_MAX_FRAME = 64 * 1024 * 1024

_LENGTH = struct.Struct("!I")
_MAX_LENGTH = (1 << 32) - 1
# Below this many consumed bytes compaction is not worth a memmove.
_COMPACT_MIN = 64 * 1024


def encode_frame(obj: object) -> bytes:
    if obj is None:
        raise ValueError("a frame cannot carry None: the decoder uses it for 'incomplete'")
    payload = msgpack.packb(obj, use_bin_type=True)
    if len(payload) > _MAX_LENGTH:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds the u32 length")
    return _LENGTH.pack(len(payload)) + payload


class FrameDecoder:
    __slots__ = ("_buffer", "_limits", "_offset", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 < max_frame <= _MAX_LENGTH:
            raise ValueError(f"max_frame must be in 1..{_MAX_LENGTH}, got {max_frame}")
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._offset = 0
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
        return len(self._buffer) - self._offset

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def next_frame(self) -> object | None:
        """The next whole frame's object, or None until more bytes arrive.

        Raises ``FrameError`` for a frame over ``max_frame`` or a payload that is not exactly
        one msgpack object; the stream cannot be resynchronised after that, so close it.
        """
        start = self._offset
        available = len(self._buffer) - start
        if available < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._buffer, start)
        if length > self.max_frame:
            raise FrameError(f"frame of {length} bytes exceeds the limit of {self.max_frame}")
        end = start + _LENGTH.size + length
        if len(self._buffer) < end:
            return None
        # The views must be released before the bytearray is resized again.
        with memoryview(self._buffer) as whole, whole[start + _LENGTH.size : end] as payload:
            try:
                obj = msgpack.unpackb(payload, raw=False, strict_map_key=False, **self._limits)
            except (ValueError, TypeError) as e:
                raise FrameError(f"undecodable frame payload: {e}") from None
        if obj is None:
            raise FrameError("frame carries nil, which no sender may send")
        self._offset = end
        self._compact()
        return obj

    def _compact(self) -> None:
        if self._offset == len(self._buffer):
            self._buffer.clear()
            self._offset = 0
        elif self._offset >= _COMPACT_MIN and self._offset * 2 >= len(self._buffer):
            del self._buffer[: self._offset]
            self._offset = 0
