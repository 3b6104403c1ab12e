"""Length-prefixed msgpack frames (store.wire.frames)."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.errors import FrameError
from store.malloc import PAGE
from store.wire.frames import (
    LARGE_FRAME,
    TAIL_FLAG,
    FrameDecoder,
    Tailed,
    _frame_buffer,
    encode_frame,
    encode_request,
    pack_args,
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=60)
)
keys = st.text(max_size=10) | st.integers(-1000, 1000) | st.binary(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=10,
)
# None at the top level is reserved for "incomplete"; inside a frame it is fine.
messages = st.lists(values.filter(lambda value: value is not None), max_size=5)


def drain(decoder: FrameDecoder) -> list[object]:
    frames = []
    while (frame := decoder.next_frame()) is not None:
        frames.append(frame)
    return frames


def test_frame_layout() -> None:
    frame = encode_frame({"op": "ping", "id": 1})
    (length,) = struct.unpack("!I", frame[:4])
    assert length == len(frame) - 4
    assert frame[4:] == b"\x82\xa2op\xa4ping\xa2id\x01"
    assert encode_frame(b"\x00")[4:] == b"\xc4\x01\x00"  # bytes as bin, not str


@settings(max_examples=50)
@given(messages)
def test_byte_by_byte(objects: list[object]) -> None:
    stream = b"".join(encode_frame(obj) for obj in objects)
    decoder = FrameDecoder()
    decoded: list[object] = []
    for index in range(len(stream)):
        decoder.feed(stream[index : index + 1])
        decoded.extend(drain(decoder))
    assert decoded == objects


@given(messages, st.data())
def test_random_splits(objects: list[object], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(obj) for obj in objects)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    decoder = FrameDecoder()
    decoded: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:end])
        decoded.extend(drain(decoder))
    assert decoded == objects
    assert decoder.buffered == 0


def test_top_level_nil_is_refused_both_ways() -> None:
    with pytest.raises(ValueError):
        encode_frame(None)
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x01\xc0")
    with pytest.raises(FrameError):
        decoder.next_frame()
    decoder = FrameDecoder()
    decoder.feed(encode_frame([None, {"k": None}]))
    assert decoder.next_frame() == [None, {"k": None}]


def test_incomplete_frame_waits() -> None:
    frame = encode_frame([1, 2, 3])
    decoder = FrameDecoder()
    for index in range(len(frame) - 1):
        decoder.feed(frame[index : index + 1])
        assert decoder.next_frame() is None
    decoder.feed(frame[-1:])
    assert decoder.next_frame() == [1, 2, 3]
    assert decoder.next_frame() is None


def test_feed_accepts_bytearray_and_memoryview() -> None:
    frame = encode_frame("x")
    decoder = FrameDecoder()
    decoder.feed(bytearray(frame[:3]))
    decoder.feed(memoryview(frame)[3:])
    assert decoder.next_frame() == "x"


def test_oversize_frame_rejected_from_its_length_alone() -> None:
    decoder = FrameDecoder(max_frame=100)
    decoder.feed(struct.pack("!I", 101))
    with pytest.raises(FrameError):
        decoder.next_frame()
    # The stream cannot be resynchronised: it keeps failing.
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_frame_at_the_limit_accepted() -> None:
    payload_size = len(encode_frame(b"x" * 95)) - 4
    decoder = FrameDecoder(max_frame=payload_size)
    decoder.feed(encode_frame(b"x" * 95) + encode_frame(b"x" * 96))
    assert decoder.next_frame() == b"x" * 95
    with pytest.raises(FrameError):
        decoder.next_frame()


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty payload
        b"\xc1",  # reserved type byte
        b"\x01\x02",  # two objects in one frame
        b"\x92\x01",  # truncated array
        b"\xa2\xff\xfe",  # invalid UTF-8 in a str
        b"\x81\x80\x01",  # a map used as a map key
        b"\xdd\xff\xff\xff\xff",  # array claiming 2**32 - 1 elements
        b"\x91" * 5000,  # nesting deeper than the decoder's stack
    ],
)
def test_undecodable_payload_rejected(payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!I", len(payload)) + payload)
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_consumed_bytes_are_not_held() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(b"y" * 1000)
    for _ in range(1000):
        decoder.feed(frame + frame[:10])
        assert decoder.next_frame() == b"y" * 1000
        decoder.feed(frame[10:])
        assert decoder.next_frame() == b"y" * 1000
        assert decoder.next_frame() is None
    # Everything was consumed, so nothing of the ~2 MB that went through is still held.
    assert decoder.buffered == 0
    assert decoder.held == 0
    decoder.feed(frame * 200 + frame[:500])
    assert len(drain(decoder)) == 200
    assert decoder.buffered == 500
    assert decoder.held < 300_000
    decoder.feed(frame[500:])
    assert drain(decoder) == [b"y" * 1000]
    assert decoder.held == 0


def test_a_large_frame_in_many_pieces_is_joined_once(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = encode_frame([b"z" * (4 << 20), 7]) + encode_frame("next")
    joins: list[int] = []

    def counting_join(parts: list[bytes | memoryview]) -> bytes:
        joins.append(sum(len(part) for part in parts))
        return b"".join(parts)

    monkeypatch.setattr("store.wire.frames._join", counting_join)
    decoder = FrameDecoder()
    # The length prefix itself is split between the first two pieces.
    decoder.feed(frame[:2])
    assert decoder.next_frame() is None
    for at in range(2, len(frame), 256 * 1024):
        decoder.feed(frame[at : at + 256 * 1024])
        if at + 256 * 1024 < len(frame) - 20:
            assert decoder.next_frame() is None
    assert drain(decoder) == [[b"z" * (4 << 20), 7], "next"]
    assert len(joins) == 1  # the big frame; "next" lay whole in the last piece
    assert decoder.held == 0


@given(st.binary(max_size=300), st.integers(1, 64))
def test_garbage_raises_only_frame_errors(garbage: bytes, max_frame: int) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    decoder.feed(garbage)
    try:
        drain(decoder)
    except FrameError:
        return
    assert decoder.buffered < 4 + max_frame


def test_max_frame_bounds() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=0)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=2**32)
    with pytest.raises(ValueError):  # the top bit of the length word says "tail"
        FrameDecoder(max_frame=TAIL_FLAG)


def test_a_request_of_packed_arguments_decodes_as_any_other() -> None:
    args = {"data": b"x" * 100_000, "v": [1, 2], "name": "obj"}
    head, body = encode_request(7, "repop", pack_args(args))
    assert body == pack_args(args)  # the arguments as packed, not copied into the head
    decoder = FrameDecoder()
    decoder.feed(head)
    decoder.feed(body)
    assert decoder.next_frame() == {"t": "req", "id": 7, "op": "repop", "a": args}
    assert decoder.buffered == 0


def test_a_raw_tail_arrives_as_a_view_of_the_received_bytes() -> None:
    args = {"ops": [["write", 0, 3]], "v": [1, 2]}
    parts = encode_request(9, "repop", pack_args(args), (b"abc", memoryview(b"defg")))
    assert parts[2] == b"abc"  # the tail's pieces go as they are
    stream = b"".join(parts)
    (word,) = struct.unpack("!I", stream[:4])
    assert word == TAIL_FLAG | (len(stream) - 4)
    decoder = FrameDecoder()
    decoder.feed(stream + encode_frame("after"))
    frame = decoder.next_frame()
    assert isinstance(frame, Tailed)
    assert frame.obj == {"t": "req", "id": 9, "op": "repop", "a": args}
    assert isinstance(frame.tail, memoryview) and frame.tail.readonly
    assert bytes(frame.tail) == b"abcdefg"
    assert decoder.next_frame() == "after"


@settings(max_examples=30)
@given(st.lists(st.binary(max_size=40), max_size=4), st.data())
def test_tailed_frames_survive_any_split(tail: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encode_request(1, "op", pack_args({"n": 1}), tuple(tail)))
    stream += encode_frame("next")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = FrameDecoder()
    got: list[object] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        decoder.feed(stream[start:end])
        got.extend(drain(decoder))
    request = {"t": "req", "id": 1, "op": "op", "a": {"n": 1}}
    if tail:
        assert isinstance(got[0], Tailed)
        assert got[0].obj == request and bytes(got[0].tail) == b"".join(tail)
    else:  # no tail: a plain frame
        assert got[0] == request
    assert got[1:] == ["next"]


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00",  # too short to hold the head's length
        struct.pack("!I", 100) + b"\x81\xa1t\xa3req",  # the head's length overruns the frame
        struct.pack("!I", 0),  # an empty head: no object at all
    ],
)
def test_malformed_tailed_frames_are_frame_errors(payload: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(struct.pack("!I", TAIL_FLAG | len(payload)) + payload)
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_a_large_frame_is_received_in_place() -> None:
    data = os.urandom(3 * LARGE_FRAME)
    parts = encode_request(5, "repop", pack_args({"ops": [["write_full", len(data)]]}), (data,))
    stream = encode_frame("before") + b"".join(parts) + encode_frame("after")
    decoder = FrameDecoder()
    decoder.feed(stream[:1000])  # "before" and the start of the large frame
    assert decoder.reserve() is None  # "before" is next, and whole
    assert drain(decoder) == ["before"]
    assert decoder.reserve() is not None  # the large frame's length is known
    at = 1000
    received_in_place = 0
    while (place := decoder.reserve()) is not None:
        n = min(len(place), 200_000)
        place[:n] = stream[at : at + n]
        decoder.filled(n)
        received_in_place += n
        at += n
    assert received_in_place == len(b"".join(parts)) - (1000 - len(encode_frame("before")))
    frame = decoder.next_frame()
    assert isinstance(frame, Tailed) and frame.tail == data
    assert frame.tail.readonly
    decoder.feed(stream[at:])
    assert drain(decoder) == ["after"]
    assert decoder.held == 0 and decoder.buffered == 0


def test_bytes_fed_to_a_large_frame_in_place_fill_it_first() -> None:
    big = encode_frame(b"q" * (2 * LARGE_FRAME))
    stream = big + encode_frame("next")
    decoder = FrameDecoder()
    decoder.feed(stream[:10])
    place = decoder.reserve()
    assert place is not None and len(place) == len(big) - 10
    assert decoder.buffered == 10
    decoder.feed(stream[10:])  # a reader that fed instead: the frame, then "next"
    assert decoder.reserve() is None
    assert drain(decoder) == [b"q" * (2 * LARGE_FRAME), "next"]


def test_small_frames_are_not_received_in_place() -> None:
    frame = encode_frame(b"s" * (LARGE_FRAME // 2))
    decoder = FrameDecoder()
    decoder.feed(frame[:100])
    assert decoder.reserve() is None
    oversize = FrameDecoder(max_frame=LARGE_FRAME)
    oversize.feed(struct.pack("!I", LARGE_FRAME + 1))
    with pytest.raises(FrameError):
        oversize.reserve()


def test_a_large_frames_tail_is_received_on_a_page_boundary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starts: list[int | None] = []

    def recording(total: int, tail_start: int | None) -> memoryview:
        starts.append(tail_start)
        buffer = _frame_buffer(total, tail_start)
        if tail_start is not None:
            with buffer[tail_start:] as tail:
                probe = ctypes.c_char.from_buffer(tail)
                assert ctypes.addressof(probe) % PAGE == 0
                del probe
        return buffer

    monkeypatch.setattr("store.wire.frames._frame_buffer", recording)
    data = os.urandom(2 * LARGE_FRAME)
    head, packed, tail = encode_request(3, "repop", pack_args({"reqid": "r" * 41}), (data,))
    plain = encode_frame(b"p" * (2 * LARGE_FRAME))
    decoder = FrameDecoder()
    frames: list[object] = []
    for stream in (head + packed + tail, plain):
        decoder.feed(stream[:4096])
        place = decoder.reserve()
        assert place is not None
        place[:] = stream[4096:]
        decoder.filled(len(place))
        frames.extend(drain(decoder))
    assert starts == [len(head) + len(packed), None]  # a plain frame has no tail to align
    assert isinstance(frames[0], Tailed) and frames[0].tail == data
    assert frames[1:] == [b"p" * (2 * LARGE_FRAME)]
