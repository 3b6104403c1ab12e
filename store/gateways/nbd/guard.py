"""What a client says to nbdkit, cut into whole NBD messages (sans I/O).

nbdkit 1.32 can abort in its ``PARALLEL`` thread model when the input of a connection
ends badly while requests are in flight: a reset, an end in the middle of a write's
payload, a request with a wrong magic number. The thread that sees it marks the
connection dead and invalidates its socket, and another worker, about to send its
reply, trips an assertion (fixed in nbdkit 1.33.10). An end of input *between*
messages is harmless: nbdkit finishes the requests in flight and closes.

:class:`RequestGuard` reads the client's side of a connection and hands on only whole
messages: the 4-byte client flags, whole options (``IHAVEOPT`` header and data) while
negotiating, then whole requests (the 28-byte header, and a write's payload with it).
Anything that breaks the protocol stops the flow at the last whole message, and the
relay (:mod:`.relay`) then ends nbdkit's input there.

The bytes are received straight into the guard's own buffer (``receive_buffer``, then
``received``), which grows to hold a whole write whose size its header gave, and what
is whole is handed on as a view of that buffer: a write's payload is copied by the kernel
in and by the kernel out, and nowhere in between. ``feed`` does the same for bytes
received elsewhere.
"""

from __future__ import annotations

import struct

OPTION_MAGIC = b"IHAVEOPT"
REQUEST_MAGIC = struct.pack(">I", 0x25609513)
OPT_EXPORT_NAME = 1
OPT_GO = 7
CMD_WRITE = 1

FLAGS_SIZE = 4
OPTION_HEADER = struct.Struct(">8sII")  # magic, option, length of its data
REQUEST_HEADER = struct.Struct(">4sHHQQI")  # magic, flags, type, cookie, offset, length

# The guard holds a message until it is whole, so it caps what it holds. nbdkit takes
# writes of up to 64 MiB; options carry names of at most 4 KiB, so 64 KiB is ample.
MAX_OPTION_DATA = 64 * 1024
MAX_WRITE = 64 * 1024 * 1024
RECEIVE_CHUNK = 256 * 1024  # free space offered to each receive, at least
KEEP = 8 * 1024 * 1024 + RECEIVE_CHUNK  # a buffer grown past this is let go once empty

_FLAGS, _OPTION, _REQUEST, _BROKEN = range(4)


class RequestGuard:
    """Receive the client's bytes; get back the prefix that ends on a message boundary."""

    def __init__(self) -> None:
        self._state = _FLAGS
        self._buffer = bytearray(RECEIVE_CHUNK)
        self._start = 0  # where the bytes held begin in the buffer (before: handed on)
        self._end = 0  # where they end
        self._whole_at = 0  # the size of the message begun at _start, once its header says
        self._go_sent = False
        self.broken: str | None = None
        self.requests = 0

    @property
    def held(self) -> int:
        """Bytes received but not handed on: the start of an unfinished message."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        """Bytes of the buffer received into (kept up to ``KEEP`` between messages)."""
        return len(self._buffer)

    def receive_buffer(self) -> memoryview:
        """Where to receive the client's next bytes (then call ``received``): room for
        ``RECEIVE_CHUNK`` bytes at least, and for the rest of the message being received
        when its header told its size. Invalidates what ``received`` handed out before."""
        held = self._end - self._start
        want = held + max(RECEIVE_CHUNK, self._whole_at - held)
        if len(self._buffer) < want or (not held and len(self._buffer) > KEEP):
            grown = bytearray(max(want, RECEIVE_CHUNK))
            grown[:held] = memoryview(self._buffer)[self._start : self._end]
            self._buffer = grown
        elif self._start:
            with memoryview(self._buffer) as view:
                view[:held] = view[self._start : self._end]
        self._start, self._end = 0, held
        return memoryview(self._buffer)[held:want]

    def received(self, count: int) -> memoryview | bytes:
        """``count`` bytes were put at the start of ``receive_buffer()``: the bytes now
        safe to hand on (maybe none), a view valid until the next ``receive_buffer``."""
        if self._state == _BROKEN:
            return b""
        self._end += count
        with memoryview(self._buffer) as view:
            done = self._scan(view[self._start : self._end])
        begin, self._start = self._start, self._start + done
        out = memoryview(self._buffer)[begin : self._start] if done else b""
        if self._state == _BROKEN:
            self._start = self._end = self._whole_at = 0  # what follows is dropped
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take ``data`` received elsewhere; return the bytes now safe to hand on."""
        out = bytearray()
        with memoryview(data) as rest:
            while rest and self._state != _BROKEN:
                room = self.receive_buffer()
                count = min(len(room), len(rest))
                room[:count] = rest[:count]
                out += self.received(count)
                rest = rest[count:]
        return bytes(out)

    def _scan(self, buffer: memoryview) -> int:
        """Walk the whole messages at the start of ``buffer``; return where they end (and
        note the size of the message after them, when its header is in)."""
        self._whole_at = 0
        pos = 0
        size = len(buffer)
        while True:
            if self._state == _FLAGS:
                if size - pos < FLAGS_SIZE:
                    return pos
                pos += FLAGS_SIZE
                self._state = _OPTION
            elif self._state == _OPTION:
                if self._go_sent and size - pos >= 4 and buffer[pos : pos + 4] == REQUEST_MAGIC:
                    self._state = _REQUEST  # the server accepted the GO: transmission
                    continue
                if size - pos < OPTION_HEADER.size:
                    return pos
                magic, option, length = OPTION_HEADER.unpack_from(buffer, pos)
                if magic != OPTION_MAGIC:
                    return self._break(pos, "not an NBD option")
                if length > MAX_OPTION_DATA:
                    return self._break(pos, f"option data of {length} bytes")
                end = pos + OPTION_HEADER.size + length
                if size < end:
                    self._whole_at = end - pos
                    return pos
                pos = end
                if option == OPT_EXPORT_NAME:
                    self._state = _REQUEST
                elif option == OPT_GO:
                    self._go_sent = True
            elif self._state == _REQUEST:
                if size - pos < REQUEST_HEADER.size:
                    return pos
                magic, _flags, kind, _cookie, _offset, length = REQUEST_HEADER.unpack_from(
                    buffer, pos
                )
                if magic != REQUEST_MAGIC:
                    return self._break(pos, "a request with a wrong magic number")
                end = pos + REQUEST_HEADER.size
                if kind == CMD_WRITE:
                    if length > MAX_WRITE:
                        return self._break(pos, f"a write of {length} bytes")
                    end += length
                if size < end:
                    self._whole_at = end - pos
                    return pos
                pos = end
                self.requests += 1
            else:
                return pos

    def _break(self, pos: int, why: str) -> int:
        self._state = _BROKEN
        self.broken = why
        return pos
