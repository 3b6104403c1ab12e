"""Stage pieces on the wire: raw data opened into place, a clear prefix, hostile input."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.errors import BadMAC, MalformedDatagram
from store.osd.staging import StagingArea
from store.wire import stages
from store.wire.datagram import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    STAGE_PREFIX_SIZE,
    TAG_SIZE,
    DatagramCipher,
    DatagramType,
    derive_datagram_keys,
    parse_header_untrusted,
)

OWNER = ("alice", 1)


def ciphers() -> tuple[DatagramCipher, DatagramCipher]:
    keys = derive_datagram_keys(b"k" * 32, b"c" * 16, b"s" * 16, 3)
    return DatagramCipher(keys, "client"), DatagramCipher(keys, "server")


def datagrams(
    client: DatagramCipher, token: int, data: bytes, encrypt: bool = True, first_seq: int = 1
) -> list[bytes]:
    """The pieces a client sends to stage `data`, as ``store.client.api`` cuts them."""
    step = stages.piece_size(MAX_DATAGRAM)
    out = []
    for seq, at in enumerate(range(0, len(data), step), start=first_seq):
        piece = stages.stage_piece(token, at, len(data), 2, 5, memoryview(data)[at : at + step])
        out.append(bytes(client.seal_fragment(9, seq, 40 + seq, 1, *piece, encrypt)))
    return out


def receive(server: DatagramCipher, area: StagingArea, datagram: bytes) -> bool:
    """What the daemon's front does with a piece; whether it filled a place."""
    header = parse_header_untrusted(datagram)
    info = stages.parse_untrusted(datagram)
    target, created = area.target(
        OWNER, info.token, info.pool, info.pg, info.offset, info.length, info.size
    )
    out = target if target is not None else memoryview(bytearray(info.length))
    try:
        server.open_fragment_into(datagram, out, header)
    except BadMAC:
        if created:
            area.forget(OWNER, info.token)
        raise
    if target is None:
        return False
    area.fill(OWNER, info.token, info.offset, info.length)
    return True


@given(
    size=st.integers(min_value=1, max_value=400_000),
    encrypt=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_pieces_in_any_order_land_in_place(size: int, encrypt: bool, seed: int) -> None:
    client, server = ciphers()
    data = os.urandom(size)
    sent = datagrams(client, 77, data, encrypt)
    order = list(range(len(sent)))
    random.Random(seed).shuffle(order)
    area = StagingArea(lambda: 0.0)
    for i in order:
        assert receive(server, area, sent[i])
    assert area.take(OWNER, 77, 2, 5, size) == data


def test_the_data_travels_raw_after_a_clear_prefix() -> None:
    client, _ = ciphers()
    data = b"visible" * 100
    (plain,) = datagrams(client, 5, data, encrypt=False)
    header = parse_header_untrusted(plain)
    assert header.type == DatagramType.REQUEST and header.fragment and not header.encrypted
    assert plain[HEADER_SIZE + STAGE_PREFIX_SIZE : -TAG_SIZE] == data  # not msgpack
    info = stages.parse_untrusted(plain)
    assert (info.token, info.offset, info.size, info.pool, info.pg, info.length) == (
        5,
        0,
        len(data),
        2,
        5,
        len(data),
    )
    (sealed,) = datagrams(client, 5, data, encrypt=True)
    assert data not in sealed


def test_a_forged_piece_never_replaces_an_authentic_one() -> None:
    client, server = ciphers()
    data = os.urandom(200_000)
    sent = datagrams(client, 8, data)
    area = StagingArea(lambda: 0.0)
    forged = bytearray(sent[1])
    forged[-40] ^= 1  # same prefix, another body: its tag fails
    with pytest.raises(BadMAC):
        receive(server, area, bytes(forged))  # scribbles over a place not yet filled...
    for datagram in sent:
        assert receive(server, area, datagram)  # ...which the authentic piece then fills
    with pytest.raises(BadMAC):
        receive(server, area, bytes(forged))  # a filled place is only checked aside
    assert not receive(server, area, sent[1])  # as is the authentic piece sent again
    assert area.take(OWNER, 8, 2, 5, len(data)) == data


def test_a_forged_first_piece_leaves_no_stage_behind() -> None:
    client, server = ciphers()
    (datagram,) = datagrams(client, 3, b"x" * 1000)
    forged = bytearray(datagram)
    forged[HEADER_SIZE + 7] ^= 0x01  # the token in the prefix: authenticated, not encrypted
    area = StagingArea(lambda: 0.0)
    with pytest.raises(BadMAC):
        receive(server, area, bytes(forged))
    assert len(area) == 0 and area.held == 0


def test_malformed_prefixes_are_refused_before_opening() -> None:
    client, _ = ciphers()
    (datagram,) = datagrams(client, 3, b"y" * 1000)
    head = datagram[:HEADER_SIZE]
    with pytest.raises(MalformedDatagram):  # no data at all
        stages.parse_untrusted(head + datagram[HEADER_SIZE : HEADER_SIZE + 24] + b"t" * 16)
    with pytest.raises(MalformedDatagram):  # past the stage it names
        stages.parse_untrusted(head + stages.PREFIX.pack(3, 10, 1000, 2, 5) + datagram[60:])
    with pytest.raises(MalformedDatagram):  # a token of 64 bits
        stages.parse_untrusted(head + stages.PREFIX.pack(1 << 63, 0, 1000, 2, 5) + datagram[60:])


def test_stage_piece_refuses_what_it_cannot_describe() -> None:
    for args in [
        (-1, 0, 10, 1, 1, b"x"),
        (1 << 63, 0, 10, 1, 1, b"x"),
        (1, 10, 10, 1, 1, b"x"),
        (1, 0, 10, 1, 1, b""),
        (1, 0, 1 << 32, 1, 1, b"x"),
        (1, 0, 10, 1 << 32, 1, b"x"),
    ]:
        with pytest.raises(ValueError):
            stages.stage_piece(*args)  # type: ignore[arg-type]


def test_only_clients_send_stage_pieces_and_only_daemons_open_them() -> None:
    client, server = ciphers()
    piece = stages.stage_piece(1, 0, 4, 2, 5, b"data")
    with pytest.raises(ValueError):  # a daemon's fragments carry replies, with their own prefix
        server.seal_fragment(9, 1, 1, 1, *piece, True)
    (datagram,) = datagrams(client, 1, b"data")
    with pytest.raises(MalformedDatagram):
        client.open_fragment_into(datagram, memoryview(bytearray(4)))
    with pytest.raises(MalformedDatagram):  # nor is it a whole request
        server.open_untrusted(datagram)
