"""Fragmented replies: cutting, the FRAGMENT flag, reassembly by version, hostile input."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.errors import MalformedDatagram
from store.osd.front import MAX_FRAGMENTED_REPLY, parse_fragments_untrusted
from store.osd.ops import InvalidRequest
from store.wire import body as wire_body
from store.wire import fragments
from store.wire.datagram import (
    MAX_DATAGRAM,
    DatagramCipher,
    DatagramType,
    derive_datagram_keys,
    parse_header_untrusted,
)


def ciphers() -> tuple[DatagramCipher, DatagramCipher]:
    keys = derive_datagram_keys(b"k" * 32, b"c" * 16, b"s" * 16, 3)
    return DatagramCipher(keys, "client"), DatagramCipher(keys, "server")


def reply_of(data: bytes, version: tuple[int, int] = (4, 17)) -> bytes:
    return wire_body.pack({"r": 0, "v": list(version), "res": [data]})


@given(
    size=st.integers(min_value=0, max_value=300_000),
    datagram=st.integers(min_value=1400, max_value=MAX_DATAGRAM),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_pieces_in_any_order_give_back_the_reply(size: int, datagram: int, seed: int) -> None:
    packed = reply_of(random.Random(seed).randbytes(size))
    bodies = fragments.split(packed, (4, 17), datagram)
    assert all(len(b) <= fragments.piece_size(datagram) + fragments.PREFIX_SIZE for b in bodies)
    random.Random(seed).shuffle(bodies)
    assembly = fragments.Reassembly(len(packed))
    results = [assembly.add(fragments.parse_untrusted(b)) for b in bodies]
    assert results[:-1] == [None] * (len(bodies) - 1)
    assert results[-1] == packed


def test_fragment_datagrams_fit_and_seal_with_the_flag() -> None:
    client, server = ciphers()
    packed = reply_of(os.urandom(1024 * 1024))
    bodies = fragments.split(packed, (9, 1), MAX_DATAGRAM)
    assert len(bodies) == 17
    datagrams = [
        server.seal(DatagramType.REPLY, 5, seq, 77, 9, b, True, fragment=True)
        for seq, b in enumerate(bodies, start=1)
    ]
    assert max(len(d) for d in datagrams) <= MAX_DATAGRAM
    assembly = fragments.Reassembly(len(packed))
    whole = None
    for datagram in datagrams:
        header, raw = client.open_untrusted(datagram)
        assert header.fragment and header.request_id == 77
        whole = assembly.add(fragments.parse_untrusted(raw))
    assert whole == packed
    assert (
        wire_body.unpack_untrusted(whole, len(packed))["res"][0]
        == wire_body.unpack_untrusted(packed, len(packed))["res"][0]
    )


def test_only_replies_may_be_fragments() -> None:
    client, _ = ciphers()
    with pytest.raises(ValueError):
        client.seal(DatagramType.REQUEST, 5, 1, 1, 1, b"\x80", True, fragment=True)
    # A request with the flag forged in (and a valid tag over it) is still refused.
    keys = derive_datagram_keys(b"k" * 32, b"c" * 16, b"s" * 16, 3)
    reply_side = DatagramCipher(keys, "server")
    forged = bytearray(client.seal(DatagramType.REQUEST, 5, 1, 1, 1, b"\x80", False))
    forged[4] |= 0x02
    assert parse_header_untrusted(bytes(forged)).fragment
    with pytest.raises(MalformedDatagram):
        reply_side.open_untrusted(bytes(forged))


def test_a_piece_of_another_version_starts_over() -> None:
    old = reply_of(b"a" * 200_000, (4, 17))
    new = reply_of(b"b" * 200_000, (4, 18))
    old_bodies = fragments.split(old, (4, 17), MAX_DATAGRAM)
    new_bodies = fragments.split(new, (4, 18), MAX_DATAGRAM)
    assert len(old_bodies) == len(new_bodies) == 4
    assembly = fragments.Reassembly(len(new))
    for body in old_bodies[:3]:
        assert assembly.add(fragments.parse_untrusted(body)) is None
    # The read was served again after a write: its pieces never mix with the old ones.
    results = [assembly.add(fragments.parse_untrusted(b)) for b in new_bodies]
    assert results == [None, None, None, new]
    assert assembly.received == 0


def test_duplicates_are_ignored() -> None:
    packed = reply_of(b"x" * 150_000)
    bodies = fragments.split(packed, (1, 1), MAX_DATAGRAM)
    assembly = fragments.Reassembly(len(packed))
    assert assembly.add(fragments.parse_untrusted(bodies[0])) is None
    assert assembly.add(fragments.parse_untrusted(bodies[0])) is None
    assert assembly.received == 1
    for body in bodies[1:]:
        last = assembly.add(fragments.parse_untrusted(body))
    assert last == packed


def test_more_than_the_limit_is_refused() -> None:
    packed = reply_of(b"y" * 200_000)
    bodies = fragments.split(packed, (1, 1), MAX_DATAGRAM)
    assembly = fragments.Reassembly(100_000)
    with pytest.raises(MalformedDatagram):
        for body in bodies:
            assembly.add(fragments.parse_untrusted(body))
    assert assembly.received == 0


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00" * 15,
        fragments.PREFIX.pack(0, 0, 1, 1),  # zero pieces
        fragments.PREFIX.pack(3, 3, 1, 1),  # index past the count
        fragments.PREFIX.pack(0, fragments.MAX_FRAGMENTS + 1, 1, 1),
    ],
)
def test_malformed_prefixes_are_refused(raw: bytes) -> None:
    with pytest.raises(MalformedDatagram):
        fragments.parse_untrusted(raw)


def test_fits_says_what_split_takes() -> None:
    largest = fragments.piece_size(1400) * fragments.MAX_FRAGMENTS
    assert fragments.fits(largest, 1400)
    assert not fragments.fits(largest + 1, 1400)
    with pytest.raises(ValueError):
        fragments.split(b"x" * (largest + 1), (1, 1), 1400)
    assert len(fragments.split(b"x" * largest, (1, 1), 1400)) == fragments.MAX_FRAGMENTS
    assert fragments.fits(16 << 20, MAX_DATAGRAM)
    assert not fragments.fits(10, 60)  # no room for a piece at all


def test_split_refuses_what_it_cannot_describe() -> None:
    with pytest.raises(ValueError):
        fragments.split(b"x" * 10, (1, 1), 60)  # no room for a piece
    with pytest.raises(ValueError):
        fragments.split(b"x" * 10, (1 << 32, 1), MAX_DATAGRAM)
    with pytest.raises(ValueError):
        fragments.split(b"x" * (1401 * fragments.MAX_FRAGMENTS), (1, 1), 1400)


def test_body_limit_grows_only_when_asked() -> None:
    packed = reply_of(b"z" * 100_000)
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
