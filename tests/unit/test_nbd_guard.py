"""The relay's guard: a client's NBD stream is handed on only in whole messages."""

from __future__ import annotations

import itertools
import random
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from store.gateways.nbd.guard import (
    KEEP,
    MAX_OPTION_DATA,
    MAX_WRITE,
    OPTION_MAGIC,
    RECEIVE_CHUNK,
    RequestGuard,
)

FLAGS = struct.pack(">I", 3)


def option(kind: int, data: bytes = b"") -> bytes:
    return OPTION_MAGIC + struct.pack(">II", kind, len(data)) + data


def request(kind: int, length: int, payload: bytes = b"", cookie: int = 1) -> bytes:
    return struct.pack(">IHHQQI", 0x25609513, 0, kind, cookie, 4096 * cookie, length) + payload


READ, WRITE, DISC, FLUSH = 0, 1, 2, 3
GO = option(7, struct.pack(">I", 0) + struct.pack(">H", 0))
# A session: flags, an option the server refuses, GO, then requests of every shape.
MESSAGES = [
    FLAGS,
    option(9, b"x" * 40),  # an unknown option: nbdkit answers it; the guard lets it by
    GO,
    request(READ, 1 << 20, cookie=1),
    request(WRITE, 5000, bytes(range(256)) * 19 + b"\x07" * 136, cookie=2),
    request(FLUSH, 0, cookie=3),
    request(WRITE, 0, cookie=4),
    request(READ, 512, cookie=5),
    request(DISC, 0, cookie=6),
]
STREAM = b"".join(MESSAGES)
BOUNDARIES = {sum(len(m) for m in MESSAGES[:i]) for i in range(len(MESSAGES) + 1)}


def feed_all(guard: RequestGuard, pieces: list[bytes]) -> bytes:
    return b"".join(guard.feed(piece) for piece in pieces)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_cut_of_a_session_is_handed_on_whole(cuts: list[int]) -> None:
    points = sorted({0, *cuts, len(STREAM)})
    pieces = [STREAM[a:b] for a, b in itertools.pairwise(points)]
    guard = RequestGuard()
    handed = b""
    received = 0
    for piece in pieces:
        handed += guard.feed(piece)
        received += len(piece)
        # At every moment, what went on ends on a message boundary; the rest is held.
        assert len(handed) in BOUNDARIES
        assert STREAM.startswith(handed)
        assert len(handed) + guard.held == received
    assert handed == STREAM
    assert guard.broken is None and guard.held == 0
    assert guard.requests == 6


@settings(max_examples=200, deadline=None)
@given(st.integers(1, len(STREAM) - 1))
def test_a_client_that_stops_anywhere_leaves_whole_messages(stop: int) -> None:
    guard = RequestGuard()
    handed = guard.feed(STREAM[:stop])
    assert handed == STREAM[: max(b for b in BOUNDARIES if b <= stop)]
    assert guard.held == stop - len(handed)


def test_export_name_starts_transmission_without_a_reply_to_parse() -> None:
    stream = FLAGS + option(1, b"disk") + request(READ, 4096)
    guard = RequestGuard()
    assert guard.feed(stream) == stream
    assert guard.requests == 1


def test_a_write_is_held_until_its_payload_is_whole() -> None:
    guard = RequestGuard()
    start = FLAGS + GO
    assert guard.feed(start) == start
    write = request(WRITE, 4 << 20, b"\x01" * (4 << 20))
    assert guard.feed(write[:-1]) == b""
    assert guard.held == len(write) - 1
    assert guard.feed(write[-1:]) == write


def test_a_request_before_go_is_not_transmission() -> None:
    # Without GO or EXPORT_NAME the server is still negotiating: request bytes there are
    # not an option, so the flow stops.
    guard = RequestGuard()
    assert guard.feed(FLAGS + request(READ, 4096)) == FLAGS
    assert guard.broken == "not an NBD option"


def test_a_bad_magic_in_transmission_stops_at_the_last_whole_request() -> None:
    guard = RequestGuard()
    good = FLAGS + GO + request(READ, 4096, cookie=1) + request(READ, 4096, cookie=2)
    bad = b"\xde\xad\xbe\xef" + bytes(24)
    assert guard.feed(good + bad + request(READ, 4096, cookie=3)) == good
    assert guard.broken == "a request with a wrong magic number"
    # Nothing more goes on, whatever follows.
    assert guard.feed(request(READ, 4096, cookie=4)) == b""
    assert guard.held == 0


def test_oversized_messages_are_refused_not_buffered() -> None:
    guard = RequestGuard()
    start = FLAGS + GO
    assert guard.feed(start + request(WRITE, MAX_WRITE + 1)) == start
    assert guard.broken == f"a write of {MAX_WRITE + 1} bytes"
    guard = RequestGuard()
    huge = OPTION_MAGIC + struct.pack(">II", 9, MAX_OPTION_DATA + 1)
    assert guard.feed(FLAGS + huge) == FLAGS
    assert guard.broken == f"option data of {MAX_OPTION_DATA + 1} bytes"
    # A read may ask for more than a write may carry: it has no payload to hold.
    guard = RequestGuard()
    big_read = request(READ, 0xFFFFFFFF)
    assert guard.feed(start + big_read) == start + big_read


def test_an_option_after_a_refused_go_is_still_an_option() -> None:
    # The server may refuse GO (no such export); the client then goes on negotiating.
    stream = FLAGS + GO + option(9, b"abc") + GO + request(READ, 4096)
    guard = RequestGuard()
    assert feed_all(guard, [stream[:30], stream[30:]]) == stream
    assert guard.requests == 1 and guard.broken is None


def receive_all(guard: RequestGuard, stream: bytes, sizes: list[int]) -> tuple[bytes, int]:
    """``stream`` received into the guard's own buffer, each receive taking at most the
    next of ``sizes`` bytes (then what is offered); returns what was handed on and how many
    receives it took."""
    handed, at, receives = b"", 0, 0
    sizes = iter(sizes)
    while at < len(stream):
        room = guard.receive_buffer()
        count = min(len(room), len(stream) - at, next(sizes, len(room)) or 1)
        room[:count] = stream[at : at + count]
        at += count
        receives += 1
        handed += bytes(guard.received(count))  # a view, valid until the next receive
        assert len(handed) + guard.held == at
    return handed, receives


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 9000), max_size=40))
def test_received_in_place_a_session_is_handed_on_whole(sizes: list[int]) -> None:
    guard = RequestGuard()
    handed, _ = receive_all(guard, STREAM, sizes)
    assert handed == STREAM
    assert guard.broken is None and guard.held == 0 and guard.requests == 6


def test_a_large_write_is_received_whole_into_room_its_header_made() -> None:
    guard = RequestGuard()
    start = FLAGS + GO
    write = request(WRITE, 4 << 20, random.Random(7).randbytes(4 << 20), cookie=1)
    after = request(FLUSH, 0, cookie=2)
    assert receive_all(guard, start, []) == (start, 1)
    # The header and a little of the payload; then room for the rest of the write at once.
    room = guard.receive_buffer()
    room[:100] = write[:100]
    assert guard.received(100) == b""
    room = guard.receive_buffer()
    assert len(room) == len(write) - 100  # up to the write's end: nothing to move after
    room[:] = write[100:]
    assert bytes(guard.received(len(room))) == write
    assert receive_all(guard, after, []) == (after, 1)
    assert guard.requests == 2 and guard.held == 0
    # The grown buffer is kept for the next large write; one grown past KEEP is let go.
    assert guard.capacity >= 4 << 20
    big = request(WRITE, 12 << 20, bytes(12 << 20), cookie=3)
    handed, receives = receive_all(guard, big, [64])
    assert handed == big and receives == 2
    assert guard.capacity > KEEP
    assert len(guard.receive_buffer()) == RECEIVE_CHUNK and guard.capacity == RECEIVE_CHUNK


def test_bytes_after_a_broken_message_are_dropped_from_the_buffer() -> None:
    guard = RequestGuard()
    good = FLAGS + GO + request(READ, 4096)
    room = guard.receive_buffer()
    stream = good + b"\xde\xad\xbe\xef" + bytes(40)
    room[: len(stream)] = stream
    assert bytes(guard.received(len(stream))) == good
    assert guard.broken == "a request with a wrong magic number" and guard.held == 0
