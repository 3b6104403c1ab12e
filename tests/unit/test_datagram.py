"""Datagram header, sealing, keys and bodies (store.wire.datagram, store.wire.body)."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from store.errors import BadMAC, MalformedDatagram, ProtocolError
from store.wire import body
from store.wire.datagram import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    TAG_SIZE,
    VERSION,
    DatagramCipher,
    DatagramKeys,
    DatagramType,
    Header,
    derive_datagram_keys,
    encode_unsealed,
    open_unsealed_untrusted,
    parse_header_untrusted,
)

HEADER = struct.Struct("!2sBBBBHQQQI")
u64 = st.integers(0, 2**64 - 1)
session_ids = st.integers(1, 2**64 - 1)
seqs = st.integers(1, 2**64 - 1)
epochs = st.integers(0, 2**32 - 1)
bodies = st.binary(max_size=300)
unsealed_types = st.sampled_from([DatagramType.HELLO, DatagramType.HELLO_REPLY, DatagramType.RESET])

KEYS = derive_datagram_keys(b"k" * 32, b"c" * 16, b"s" * 16, osd_id=7)
CLIENT = DatagramCipher(KEYS, "client")
SERVER = DatagramCipher(KEYS, "server")


def raw_header(
    magic: bytes = b"SD",
    version: int = VERSION,
    type: int = DatagramType.HELLO,
    flags: int = 0,
    reserved8: int = 0,
    reserved16: int = 0,
    session_id: int = 1,
    seq: int = 0,
    request_id: int = 0,
    epoch: int = 0,
) -> bytes:
    return HEADER.pack(
        magic, version, type, flags, reserved8, reserved16, session_id, seq, request_id, epoch
    )


def sealed_request(body_bytes: bytes = b"body", encrypt: bool = True, seq: int = 5) -> bytes:
    return CLIENT.seal(DatagramType.REQUEST, 42, seq, 9, 3, body_bytes, encrypt)


# --- header ---------------------------------------------------------------------------------


@given(
    type=st.sampled_from(list(DatagramType)),
    flags=st.sampled_from([0, 1, 2, 3]),
    session_id=session_ids,
    seq=u64,
    request_id=u64,
    epoch=epochs,
    tail=bodies,
)
def test_header_parses_every_valid_field_combination(
    type: DatagramType,
    flags: int,
    session_id: int,
    seq: int,
    request_id: int,
    epoch: int,
    tail: bytes,
) -> None:
    data = raw_header(
        type=type, flags=flags, session_id=session_id, seq=seq, request_id=request_id, epoch=epoch
    )
    assert len(data) == HEADER_SIZE
    header = parse_header_untrusted(data + tail)
    assert header == Header(type, flags, session_id, seq, request_id, epoch)
    assert header.encrypted == bool(flags & 1)
    assert header.fragment == bool(flags & 2)


@pytest.mark.parametrize(
    "fields",
    [
        {"magic": b"SE"},
        {"magic": b"\0\0"},
        {"version": 0},
        {"version": 1},  # before fragment prefixes went in clear
        {"version": 2},  # before stage pieces went raw
        {"version": 3},  # before stage pieces were acknowledged together
        {"version": 5},
        {"type": 0},
        {"type": 6},
        {"type": 255},
        {"flags": 4},
        {"flags": 0x80},
        {"reserved8": 1},
        {"reserved16": 0x8000},
        {"session_id": 0},
    ],
)
def test_header_rejects_bad_fields(fields: dict[str, object]) -> None:
    with pytest.raises(MalformedDatagram):
        parse_header_untrusted(raw_header(**fields))  # type: ignore[arg-type]


def test_header_rejects_short_input() -> None:
    valid = raw_header()
    for cut in range(HEADER_SIZE):
        with pytest.raises(MalformedDatagram):
            parse_header_untrusted(valid[:cut])


# --- unsealed -------------------------------------------------------------------------------


@given(type=unsealed_types, session_id=session_ids, request_id=u64, epoch=epochs, data=bodies)
def test_unsealed_round_trip(
    type: DatagramType, session_id: int, request_id: int, epoch: int, data: bytes
) -> None:
    datagram = encode_unsealed(type, session_id, request_id, epoch, data)
    assert len(datagram) == HEADER_SIZE + len(data)
    header, opened = open_unsealed_untrusted(datagram)
    assert header == Header(type, 0, session_id, 0, request_id, epoch)
    assert opened == data


def test_unsealed_truncated_into_header_is_rejected() -> None:
    datagram = encode_unsealed(DatagramType.HELLO, 1, 2, 3, b"hello body")
    for cut in range(HEADER_SIZE):
        with pytest.raises(MalformedDatagram):
            open_unsealed_untrusted(datagram[:cut])


def test_unsealed_refuses_sealed_types() -> None:
    for type in (DatagramType.REQUEST, DatagramType.REPLY):
        with pytest.raises(ValueError):
            encode_unsealed(type, 1, 2, 3, b"")
        with pytest.raises(MalformedDatagram):
            open_unsealed_untrusted(raw_header(type=type, seq=1) + b"x" * TAG_SIZE)


def test_unsealed_refuses_flags_and_seq() -> None:
    with pytest.raises(MalformedDatagram):
        open_unsealed_untrusted(raw_header(flags=1))
    with pytest.raises(MalformedDatagram):
        open_unsealed_untrusted(raw_header(seq=1))


def test_unsealed_size_and_field_limits() -> None:
    encode_unsealed(DatagramType.HELLO, 1, 0, 0, b"x" * (MAX_DATAGRAM - HEADER_SIZE))
    with pytest.raises(ValueError):
        encode_unsealed(DatagramType.HELLO, 1, 0, 0, b"x" * (MAX_DATAGRAM - HEADER_SIZE + 1))
    with pytest.raises(ValueError):
        encode_unsealed(DatagramType.HELLO, 0, 0, 0, b"")
    with pytest.raises(ValueError):
        encode_unsealed(DatagramType.HELLO, 1, 0, 2**32, b"")
    with pytest.raises(MalformedDatagram):
        open_unsealed_untrusted(raw_header() + b"x" * (MAX_DATAGRAM - HEADER_SIZE + 1))


# --- sealed ---------------------------------------------------------------------------------


@given(
    role=st.sampled_from(["client", "server"]),
    encrypt=st.booleans(),
    session_id=session_ids,
    seq=seqs,
    request_id=u64,
    epoch=epochs,
    data=bodies,
)
def test_sealed_round_trip(
    role: str,
    encrypt: bool,
    session_id: int,
    seq: int,
    request_id: int,
    epoch: int,
    data: bytes,
) -> None:
    sender, receiver = (CLIENT, SERVER) if role == "client" else (SERVER, CLIENT)
    type = DatagramType.REQUEST if role == "client" else DatagramType.REPLY
    datagram = sender.seal(type, session_id, seq, request_id, epoch, data, encrypt)
    assert len(datagram) == HEADER_SIZE + len(data) + TAG_SIZE
    header, opened = receiver.open_untrusted(datagram)
    assert header == Header(type, int(encrypt), session_id, seq, request_id, epoch)
    assert opened == data


def test_plaintext_visible_only_when_not_encrypted() -> None:
    secret = b"the quick brown fox jumps over the lazy dog"
    clear = sealed_request(secret, encrypt=False)
    assert clear[HEADER_SIZE : HEADER_SIZE + len(secret)] == secret
    hidden = sealed_request(secret, encrypt=True)
    assert secret not in hidden
    assert b"quick" not in hidden


def test_nonce_is_seq_and_aad_is_header() -> None:
    # Pin the construction, so that another implementation of the protocol interoperates.
    aead = AESGCM(KEYS.client_to_server)
    nonce = b"\0\0\0\0" + (5).to_bytes(8, "big")
    encrypted = sealed_request(b"payload", encrypt=True)
    header = encrypted[:HEADER_SIZE]
    assert aead.decrypt(nonce, encrypted[HEADER_SIZE:], header) == b"payload"
    clear = sealed_request(b"payload", encrypt=False)
    assert clear[-TAG_SIZE:] == aead.encrypt(nonce, b"", clear[:-TAG_SIZE])


@given(data=bodies, encrypt=st.booleans())
def test_every_truncation_of_a_sealed_datagram_is_rejected(data: bytes, encrypt: bool) -> None:
    datagram = sealed_request(data, encrypt)
    for cut in range(len(datagram)):
        with pytest.raises((BadMAC, MalformedDatagram)):
            SERVER.open_untrusted(datagram[:cut])


@given(data=bodies, encrypt=st.booleans(), where=st.integers(0, 2**20))
def test_any_flipped_bit_is_rejected(data: bytes, encrypt: bool, where: int) -> None:
    datagram = bytearray(sealed_request(data, encrypt))
    bit = where % (len(datagram) * 8)
    datagram[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((BadMAC, MalformedDatagram)):
        SERVER.open_untrusted(bytes(datagram))


def test_flipped_body_or_tag_bit_is_a_bad_mac() -> None:
    for encrypt in (True, False):
        datagram = bytearray(sealed_request(b"some body", encrypt))
        for index in (HEADER_SIZE, len(datagram) - 1):
            tampered = bytearray(datagram)
            tampered[index] ^= 0x01
            with pytest.raises(BadMAC):
                SERVER.open_untrusted(bytes(tampered))


def test_header_fields_are_authenticated() -> None:
    datagram = bytearray(sealed_request(encrypt=False))
    datagram[35] ^= 0x01  # last byte of the epoch: structurally valid, so only the tag can tell
    with pytest.raises(BadMAC):
        SERVER.open_untrusted(bytes(datagram))


def test_wrong_key_direction_or_daemon_is_rejected() -> None:
    for encrypt in (True, False):
        datagram = sealed_request(b"body", encrypt)
        other_session = derive_datagram_keys(b"K" * 32, b"c" * 16, b"s" * 16, osd_id=7)
        other_daemon = derive_datagram_keys(b"k" * 32, b"c" * 16, b"s" * 16, osd_id=8)
        other_nonce = derive_datagram_keys(b"k" * 32, b"c" * 16, b"S" * 16, osd_id=7)
        for keys in (other_session, other_daemon, other_nonce):
            with pytest.raises(BadMAC):
                DatagramCipher(keys, "server").open_untrusted(datagram)
        # The client's own key cannot open a REQUEST either, were the type check not there.
        swapped = DatagramKeys(KEYS.server_to_client, KEYS.client_to_server)
        with pytest.raises(BadMAC):
            DatagramCipher(swapped, "server").open_untrusted(datagram)
        # A request reflected back at the client that sent it.
        with pytest.raises(MalformedDatagram):
            CLIENT.open_untrusted(datagram)


def test_seal_refusals() -> None:
    with pytest.raises(ValueError):
        CLIENT.seal(DatagramType.REPLY, 1, 1, 1, 1, b"", True)
    with pytest.raises(ValueError):
        SERVER.seal(DatagramType.REQUEST, 1, 1, 1, 1, b"", True)
    with pytest.raises(ValueError):
        CLIENT.seal(DatagramType.HELLO, 1, 1, 1, 1, b"", True)
    with pytest.raises(ValueError):
        CLIENT.seal(DatagramType.REQUEST, 1, 0, 1, 1, b"", True)
    with pytest.raises(ValueError):
        CLIENT.seal(DatagramType.REQUEST, 1, 2**64, 1, 1, b"", True)
    largest = MAX_DATAGRAM - HEADER_SIZE - TAG_SIZE
    for encrypt in (True, False):
        assert len(CLIENT.seal(DatagramType.REQUEST, 1, 1, 1, 1, bytes(largest), encrypt)) == (
            MAX_DATAGRAM
        )
        with pytest.raises(ValueError):
            CLIENT.seal(DatagramType.REQUEST, 1, 1, 1, 1, bytes(largest + 1), encrypt)


def test_open_refuses_seq_zero_even_with_a_valid_tag() -> None:
    header = raw_header(type=DatagramType.REQUEST, flags=1, session_id=42, seq=0)
    sealed = AESGCM(KEYS.client_to_server).encrypt(bytes(12), b"body", header)
    with pytest.raises(MalformedDatagram):
        SERVER.open_untrusted(header + sealed)


def test_cipher_rejects_unknown_role() -> None:
    with pytest.raises(ValueError):
        DatagramCipher(KEYS, "proxy")  # type: ignore[arg-type]


@given(garbage=st.binary(max_size=200), with_header=st.sampled_from([None, *DatagramType]))
def test_garbage_raises_only_typed_errors(garbage: bytes, with_header: int | None) -> None:
    data = garbage
    if with_header is not None:
        seq = int.from_bytes(garbage[:1] or b"\0", "big")
        data = raw_header(type=with_header, flags=len(garbage) % 2, seq=seq) + garbage
    for parse in (
        parse_header_untrusted,
        open_unsealed_untrusted,
        SERVER.open_untrusted,
        CLIENT.open_untrusted,
    ):
        try:
            parse(data)
        except ProtocolError:
            pass
    with pytest.raises((BadMAC, MalformedDatagram)):
        SERVER.open_untrusted(data)


# --- keys -----------------------------------------------------------------------------------


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def test_keys_follow_the_documented_derivation() -> None:
    keys = derive_datagram_keys(b"session", b"client-nonce", b"server-nonce", osd_id=0x01020304)
    okm = _hkdf_sha256(
        b"session", b"client-nonceserver-nonce", b"store datagram v1\x01\x02\x03\x04", 64
    )
    assert keys.client_to_server == okm[:32]
    assert keys.server_to_client == okm[32:]
    assert keys.client_to_server != keys.server_to_client


def test_keys_do_not_leak_through_repr() -> None:
    assert KEYS.client_to_server.hex() not in repr(KEYS)
    assert str(KEYS.client_to_server) not in repr(KEYS)


def test_key_argument_checks() -> None:
    with pytest.raises(ValueError):
        derive_datagram_keys(b"k", b"c", b"s", osd_id=2**32)
    with pytest.raises(ValueError):
        DatagramKeys(b"short", b"x" * 32)


# --- bodies ---------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=8) | st.integers(0, 1000), values, max_size=6))
def test_body_round_trip(message: dict[object, object]) -> None:
    assert body.unpack_untrusted(body.pack(message)) == message


@pytest.mark.parametrize("not_a_map", [[1, 2], 1, "map", b"map", None])
def test_body_must_be_a_map(not_a_map: object) -> None:
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(body.pack(not_a_map))


def test_body_rejects_trailing_bytes_and_truncation() -> None:
    packed = body.pack({"op": "read", "data": b"x" * 10})
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(packed + b"\x00")
    for cut in range(len(packed)):
        with pytest.raises(MalformedDatagram):
            body.unpack_untrusted(packed[:cut])


def test_body_rejects_deep_nesting() -> None:
    nested: dict[str, object] = {"leaf": 1}
    for _ in range(body.MAX_BODY_DEPTH - 1):
        nested = {"n": nested}
    assert body.unpack_untrusted(body.pack(nested)) == nested
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(body.pack({"n": nested}))
    lists: object = 1
    for _ in range(body.MAX_BODY_DEPTH):
        lists = [lists]
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(body.pack({"n": lists}))
    # Deeper than msgpack's own stack and the Python recursion limit.
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(b"\x81\xa1n" + b"\x91" * 60000 + b"\x01")


def test_body_rejects_absurd_lengths() -> None:
    # A 5-byte array header claiming 2**32 - 1 elements, a map claiming 2**32 - 1 pairs, and
    # an input larger than any datagram.
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(b"\x81\xa1n\xdd\xff\xff\xff\xff")
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(b"\xdf\xff\xff\xff\xff")
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(body.pack({"n": bytes(MAX_DATAGRAM)}))


def test_body_rejects_unhashable_keys_and_bad_utf8() -> None:
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(b"\x81\x91\x01\x02")
    with pytest.raises(MalformedDatagram):
        body.unpack_untrusted(b"\x81\xa2\xff\xfe\x01")


@given(st.binary(max_size=200))
def test_body_garbage_raises_only_typed_errors(garbage: bytes) -> None:
    try:
        result = body.unpack_untrusted(garbage)
    except MalformedDatagram:
        return
    assert isinstance(result, dict)
