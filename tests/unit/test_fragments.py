"""Fragmented replies: cutting, the FRAGMENT flag, reassembly by version, hostile input."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.errors import BadMAC, MalformedDatagram
from store.osd.front import MAX_FRAGMENTED_REPLY, parse_fragments_untrusted
from store.osd.ops import InvalidRequest
from store.wire import body as wire_body
from store.wire import fragments
from store.wire.datagram import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    TAG_SIZE,
    DatagramCipher,
    DatagramType,
    derive_datagram_keys,
    parse_header_untrusted,
)


def ciphers() -> tuple[DatagramCipher, DatagramCipher]:
    keys = derive_datagram_keys(b"k" * 32, b"c" * 16, b"s" * 16, 3)
    return DatagramCipher(keys, "client"), DatagramCipher(keys, "server")


def reply_of(data: bytes, version: tuple[int, int] = (4, 17)) -> dict[str, object]:
    return {"r": 0, "v": list(version), "res": [data]}


def datagrams_of(
    server: DatagramCipher,
    reply: dict[str, object],
    version: tuple[int, int],
    datagram: int = MAX_DATAGRAM,
    encrypt: bool = True,
    first_seq: int = 1,
) -> list[bytes]:
    """The fragment datagrams a daemon sends for `reply`, as ``store.osd.front`` does."""
    head, tail = fragments.reply_parts(reply)
    return [
        bytes(server.seal_fragment(5, seq, 77, 9, prefix, piece, encrypt))
        for seq, (prefix, piece) in enumerate(
            fragments.split(head, tail, version, datagram), start=first_seq
        )
    ]


def receive(
    client: DatagramCipher, assembly: fragments.Reassembly, datagram: bytes
) -> dict[object, object] | None:
    """What the client's transport does with one fragment datagram."""
    fragment = fragments.parse_untrusted(datagram)
    target = assembly.target(fragment)
    if target is None:
        return None
    with target:
        header = client.open_fragment_into(datagram, target)
        assert header.fragment and header.request_id == 77
        return assembly.add(fragment, target)


def assembly_for(limit: int, datagram: int = MAX_DATAGRAM) -> fragments.Reassembly:
    return fragments.Reassembly(limit, fragments.piece_size(datagram))


@given(
    size=st.integers(min_value=0, max_value=300_000),
    datagram=st.integers(min_value=1400, max_value=MAX_DATAGRAM),
    seed=st.integers(min_value=0, max_value=2**32),
    encrypt=st.booleans(),
)
def test_pieces_in_any_order_give_back_the_reply(
    size: int, datagram: int, seed: int, encrypt: bool
) -> None:
    client, server = ciphers()
    data = random.Random(seed).randbytes(size)
    sent = datagrams_of(server, reply_of(data), (4, 17), datagram, encrypt)
    assert all(len(d) <= datagram for d in sent)
    random.Random(seed).shuffle(sent)
    assembly = assembly_for(size + 4096, datagram)
    results = [receive(client, assembly, d) for d in sent]
    assert results[:-1] == [None] * (len(sent) - 1)
    assert results[-1] == {"r": 0, "v": [4, 17], "res": [data]}


@pytest.mark.parametrize("pieces", [1, 2, 3])
def test_every_split_of_tail_and_head_over_pieces(pieces: int) -> None:
    """Replies ending anywhere from the head just inside the last piece to one byte past
    it: data filling pieces exactly, the head or the trailer across two pieces."""
    client, server = ciphers()
    datagram = 2000
    piece = fragments.piece_size(datagram)
    head = fragments.reply_parts(reply_of(b""))[0]
    extra = len(head) + fragments.TRAILER.size
    for end in range(pieces * piece - extra - 2, pieces * piece + 2):
        data = random.Random(end).randbytes(end - extra)
        sent = datagrams_of(server, reply_of(data), (4, 17), datagram)
        assert len(sent) == -(-end // piece)
        assembly = assembly_for(len(data) + 4096, datagram)
        results = [receive(client, assembly, d) for d in reversed(sent)]
        assert results[-1] == reply_of(data), end


def test_the_data_travels_raw_and_lands_in_place() -> None:
    client, server = ciphers()
    data = os.urandom(1024 * 1024)
    sent = datagrams_of(server, reply_of(data, (9, 1)), (9, 1))
    assert len(sent) == 17
    assert max(len(d) for d in sent) <= MAX_DATAGRAM
    # Unencrypted, the first piece is the data itself, right after header and prefix.
    clear = datagrams_of(server, reply_of(data, (9, 1)), (9, 1), encrypt=False)
    start = HEADER_SIZE + fragments.PREFIX_SIZE
    assert clear[0][start : start + 1000] == data[:1000]
    assert fragments.PREFIX.unpack_from(clear[3], HEADER_SIZE) == (3, 17, 9, 1)
    assembly = assembly_for(len(data) + 4096)
    reply = None
    for datagram in sent:
        reply = receive(client, assembly, datagram)
    assert reply is not None
    got = reply["res"][0]  # type: ignore[index]
    assert type(got) is bytearray and got == data


def test_replies_without_one_data_result_go_whole_as_head() -> None:
    client, server = ciphers()
    reply = {"r": 0, "v": [1, 2], "res": [{"size": 5}, b"z" * 100_000]}
    head, tail = fragments.reply_parts(reply)
    assert tail == b"" and head == wire_body.pack(reply)
    assembly = assembly_for(200_000)
    results = [receive(client, assembly, d) for d in datagrams_of(server, reply, (1, 2))]
    assert results[-1] == reply


def test_a_client_sends_no_reply_fragments() -> None:
    client, server = ciphers()
    with pytest.raises(ValueError):  # its fragments are stage pieces, with their own prefix
        client.seal_fragment(5, 1, 1, 1, fragments.PREFIX.pack(0, 1, 1, 1), b"\x80", True)
    # A whole request with the flag forged in (and a valid tag over it) is still refused.
    forged = bytearray(client.seal(DatagramType.REQUEST, 5, 1, 1, 1, b"\x80", False))
    forged[4] |= 0x02
    assert parse_header_untrusted(bytes(forged)).fragment
    with pytest.raises(MalformedDatagram):
        server.open_untrusted(bytes(forged))


def test_a_fragment_is_not_a_whole_datagram_nor_the_reverse() -> None:
    client, server = ciphers()
    (fragment,) = datagrams_of(server, reply_of(b"q" * 10), (1, 1))
    with pytest.raises(MalformedDatagram):
        client.open_untrusted(fragment)
    whole = bytes(server.seal(DatagramType.REPLY, 5, 9, 77, 9, b"\x80" * 40, True))
    with pytest.raises(MalformedDatagram):
        client.open_fragment_into(whole, memoryview(bytearray(len(whole) - 68)))


def test_a_forged_piece_never_replaces_an_authentic_one() -> None:
    client, server = ciphers()
    data = os.urandom(200_000)
    sent = datagrams_of(server, reply_of(data), (4, 17))
    assembly = assembly_for(len(data) + 4096)
    assert receive(client, assembly, sent[1]) is None
    # Same prefix, damaged ciphertext: opened into the place of a piece not yet held, it
    # fails its tag and that place stays free; for a piece held, it is not even opened.
    for index, held in ((0, False), (1, True)):
        forged = bytearray(sent[index])
        forged[HEADER_SIZE + fragments.PREFIX_SIZE + 10] ^= 0xFF
        if held:
            assert receive(client, assembly, bytes(forged)) is None
        else:
            with pytest.raises(BadMAC):
                receive(client, assembly, bytes(forged))
    # Another index in the clear prefix: the tag covers the prefix.
    moved = bytearray(sent[0])
    moved[HEADER_SIZE + 1] = 2
    with pytest.raises(BadMAC):
        receive(client, assembly, bytes(moved))
    assert assembly.received == 1
    assert receive(client, assembly, sent[1]) is None  # a duplicate: dropped unopened
    results = [receive(client, assembly, d) for d in (sent[0], *sent[2:])]
    assert results[-1] == reply_of(data)


def test_a_piece_of_another_version_starts_over() -> None:
    client, server = ciphers()
    old = datagrams_of(server, reply_of(b"a" * 200_000, (4, 17)), (4, 17))
    new = datagrams_of(server, reply_of(b"b" * 200_000, (4, 18)), (4, 18), first_seq=10)
    assert len(old) == len(new) == 4
    assembly = assembly_for(210_000)
    for datagram in old[:3]:
        assert receive(client, assembly, datagram) is None
    # A forged piece of another version changes nothing: it is opened aside.
    forged = bytearray(new[0])
    forged[-1] ^= 1
    with pytest.raises(BadMAC):
        receive(client, assembly, bytes(forged))
    assert assembly.received == 3
    # The read was served again after a write: its pieces never mix with the old ones.
    results = [receive(client, assembly, d) for d in new]
    assert results == [None, None, None, reply_of(b"b" * 200_000, (4, 18))]
    assert assembly.received == 0


def test_more_than_the_limit_is_refused_before_opening() -> None:
    client, server = ciphers()
    sent = datagrams_of(server, reply_of(b"y" * 200_000), (1, 1))
    assembly = assembly_for(100_000)
    with pytest.raises(MalformedDatagram):
        for datagram in sent:
            receive(client, assembly, datagram)
    assert assembly.received == 0


def test_short_pieces_other_than_the_last_are_refused() -> None:
    client, server = ciphers()
    sent = datagrams_of(server, reply_of(b"y" * 200_000), (1, 1))
    assembly = assembly_for(300_000)
    with pytest.raises(MalformedDatagram):
        receive(client, assembly, sent[0][:-100])


@pytest.mark.parametrize(
    "prefix",
    [
        fragments.PREFIX.pack(0, 0, 1, 1),  # zero pieces
        fragments.PREFIX.pack(3, 3, 1, 1),  # index past the count
        fragments.PREFIX.pack(0, fragments.MAX_FRAGMENTS + 1, 1, 1),
    ],
)
def test_malformed_prefixes_are_refused(prefix: bytes) -> None:
    with pytest.raises(MalformedDatagram):
        fragments.parse_untrusted(b"h" * HEADER_SIZE + prefix + b"p" * 100 + b"t" * TAG_SIZE)


def test_short_datagrams_are_refused() -> None:
    for size in (0, HEADER_SIZE, HEADER_SIZE + fragments.PREFIX_SIZE + TAG_SIZE - 1):
        with pytest.raises(MalformedDatagram):
            fragments.parse_untrusted(b"x" * size)


def test_fits_says_what_split_takes() -> None:
    largest = fragments.piece_size(1400) * fragments.MAX_FRAGMENTS
    head = fragments.reply_parts(reply_of(b""))[0]
    room = largest - len(head) - fragments.TRAILER.size
    assert fragments.fits(largest, 1400)
    assert not fragments.fits(largest + 1, 1400)
    with pytest.raises(ValueError):
        fragments.split(head, b"x" * (room + 1), (1, 1), 1400)
    assert len(fragments.split(head, b"x" * room, (1, 1), 1400)) == fragments.MAX_FRAGMENTS
    assert fragments.fits(16 << 20, MAX_DATAGRAM)
    assert not fragments.fits(10, 60)  # no room for a piece at all


def test_split_refuses_what_it_cannot_describe() -> None:
    with pytest.raises(ValueError):
        fragments.split(b"h", b"x" * 10, (1, 1), 60)  # no room for a piece
    with pytest.raises(ValueError):
        fragments.split(b"h", b"x" * 10, (1 << 32, 1), MAX_DATAGRAM)
    with pytest.raises(ValueError):
        fragments.split(b"h", b"x" * (1401 * fragments.MAX_FRAGMENTS), (1, 1), 1400)


def test_a_head_that_does_not_add_up_is_refused() -> None:
    client, server = ciphers()
    piece = fragments.piece_size(MAX_DATAGRAM)
    bad = [
        fragments.TRAILER.pack(10),  # a head longer than the whole reply
        b"\x93\x01\x02\x03" + fragments.TRAILER.pack(4),  # a head that is not a map
        b"tail" + wire_body.pack({"r": 0}) + fragments.TRAILER.pack(3),  # tail unnamed
        b"t" + wire_body.pack({"r": 0, "res": [1, 2], "tail": 0}) + fragments.TRAILER.pack(14),
    ]
    for packed in bad:
        assert len(packed) < piece
        assembly = assembly_for(100)
        datagram = bytes(
            server.seal_fragment(5, 1, 77, 9, fragments.PREFIX.pack(0, 1, 1, 1), packed, True)
        )
        with pytest.raises(MalformedDatagram):
            receive(client, assembly, datagram)


def test_body_limit_grows_only_when_asked() -> None:
    packed = wire_body.pack(reply_of(b"z" * 100_000))
    with pytest.raises(MalformedDatagram):
        wire_body.unpack_untrusted(packed)
    assert wire_body.unpack_untrusted(packed, len(packed))["res"][0] == b"z" * 100_000
    with pytest.raises(MalformedDatagram):
        wire_body.unpack_untrusted(packed, len(packed) - 1)


def test_the_daemon_checks_what_a_read_asks_for() -> None:
    assert parse_fragments_untrusted(None) is None
    assert parse_fragments_untrusted([1 << 20, 65000]) == (1 << 20, 65000)
    for bad in (
        [0, 65000],
        [MAX_FRAGMENTED_REPLY + 1, 65000],
        [1 << 20, 100],
        [1 << 20, MAX_DATAGRAM + 1],
        [True, 65000],
        [1 << 20],
        "lots",
        {"n": 1},
    ):
        with pytest.raises(InvalidRequest):
            parse_fragments_untrusted(bad)
