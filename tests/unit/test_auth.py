"""What the master seals and daemons open: service keys, tickets, hello MACs."""

from __future__ import annotations

import os
import struct

import msgpack
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from store.auth import (
    MAX_CLOCK_SKEW,
    Caps,
    ServiceKey,
    ServiceKeys,
    Ticket,
    hello_mac,
    hello_reply_mac,
    issue_ticket,
    new_secret,
    open_for_client,
    open_ticket_untrusted,
    seal_for_client,
    seal_ticket,
    verify_hello_mac,
    verify_hello_reply_mac,
)
from store.errors import AuthError, ProtocolError

# --- service keys ----------------------------------------------------------------------


def test_no_service_key_yet() -> None:
    with pytest.raises(AuthError, match="no service key"):
        ServiceKeys().current()
    with pytest.raises(AuthError):
        seal_ticket(ServiceKeys(), issue_ticket("bob", Caps(), 0.0, 10.0))


def test_rotation_keeps_old_generation_while_its_tickets_live() -> None:
    interval, ttl = 100.0, 50.0
    keys = ServiceKeys()
    assert keys.rotate(0.0, interval, ttl)
    assert [k.gen for k in keys.generations()] == [1]
    assert not keys.rotate(99.0, interval, ttl)

    old = issue_ticket("bob", Caps.parse(["default=rw"]), now=99.5, ttl=ttl)
    old_blob = seal_ticket(keys, old)

    assert keys.rotate(100.0, interval, ttl)
    assert [k.gen for k in keys.generations()] == [1, 2]
    assert keys.current().gen == 2
    assert keys.current().created == 100.0
    assert keys.get(1) is not None
    new_blob = seal_ticket(keys, issue_ticket("bob", Caps(), now=100.0, ttl=ttl))
    assert new_blob[2:6] == struct.pack(">I", 2)

    # Daemons hold a copy pushed by the master.
    daemon = ServiceKeys.from_wire(keys.to_wire())
    assert open_ticket_untrusted(daemon, old_blob, now=149.0) == old

    assert not keys.rotate(150.0, interval, ttl)  # not yet strictly past 100 + 50
    assert [k.gen for k in keys.generations()] == [1, 2]
    assert keys.rotate(150.5, interval, ttl)
    assert [k.gen for k in keys.generations()] == [2]
    assert keys.get(1) is None

    daemon = ServiceKeys.from_wire(keys.to_wire())
    with pytest.raises(AuthError, match="unknown service key generation 1"):
        open_ticket_untrusted(daemon, old_blob, now=149.0)
    assert open_ticket_untrusted(daemon, new_blob, now=149.0).client == "bob"

    assert keys.rotate(200.0, interval, ttl)
    assert [k.gen for k in keys.generations()] == [2, 3]


def test_rotation_never_drops_newest_and_catches_up() -> None:
    keys = ServiceKeys()
    keys.rotate(0.0, 10.0, 1.0)
    assert keys.rotate(1000.0, 10.0, 1.0)
    assert [k.gen for k in keys.generations()] == [1, 2]
    assert keys.rotate(1001.5, 10.0, 1.0)
    assert [k.gen for k in keys.generations()] == [2]
    assert keys.current().created == 1000.0
    assert len({k.key for k in ServiceKeys([*keys.generations()]).generations()}) == 1


@given(
    st.lists(
        st.tuples(
            st.integers(1, 2**32 - 1),
            st.binary(min_size=32, max_size=32),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        unique_by=lambda t: t[0],
        max_size=4,
    )
)
def test_service_keys_wire_round_trip(entries: list[tuple[int, bytes, float]]) -> None:
    keys = ServiceKeys(ServiceKey(g, k, c) for g, k, c in entries)
    wire = msgpack.unpackb(msgpack.packb(keys.to_wire()), raw=False)
    assert ServiceKeys.from_wire(wire).generations() == keys.generations()
    assert [k.gen for k in keys.generations()] == sorted(g for g, _, _ in entries)


@pytest.mark.parametrize(
    "wire",
    [
        None,
        {"1": 2},
        [[1, b"k" * 32]],
        [[0, b"k" * 32, 1.0]],
        [[True, b"k" * 32, 1.0]],
        [[2**32, b"k" * 32, 1.0]],
        [[1, b"k" * 31, 1.0]],
        [[1, "k" * 32, 1.0]],
        [[1, b"k" * 32, float("nan")]],
        [[1, b"k" * 32, "now"]],
        [[1, b"k" * 32, 1.0], [1, b"j" * 32, 2.0]],
    ],
)
def test_service_keys_from_wire_rejects(wire: object) -> None:
    with pytest.raises(ProtocolError):
        ServiceKeys.from_wire(wire)


def test_service_key_repr_hides_key() -> None:
    sk = ServiceKey(1, b"\x01" * 32, 0.0)
    assert "key=" not in repr(sk) and repr(b"\x01" * 32) not in repr(sk)


# --- tickets ---------------------------------------------------------------------------


@pytest.fixture
def keys() -> ServiceKeys:
    k = ServiceKeys()
    k.rotate(1000.0, 3600.0, 3600.0)
    return k


def test_ticket_round_trip(keys: ServiceKeys) -> None:
    caps = Caps.parse(["default=rw", "*=r"])
    ticket = issue_ticket("bob", caps, now=1000.0, ttl=600.0)
    assert (ticket.issued, ticket.expires) == (1000.0, 1600.0)
    assert len(ticket.session_key) == 32 and len(ticket.ticket_id) == 16
    assert ticket.session_key != issue_ticket("bob", caps, 1000.0, 600.0).session_key
    blob = seal_ticket(keys, ticket)
    assert blob[:2] == b"T1" and blob[2:6] == struct.pack(">I", keys.current().gen)
    assert ticket.session_key not in blob
    opened = open_ticket_untrusted(keys, blob, now=1001.0)
    assert opened == ticket
    assert opened.caps.allows("default", True) and not opened.caps.allows("x", True)
    assert "session_key" not in repr(ticket)
    assert seal_ticket(keys, ticket) != blob  # fresh nonce each time


def test_issue_ticket_rejects_bad_name() -> None:
    with pytest.raises(AuthError):
        issue_ticket("no good", Caps(), 0.0, 1.0)


def test_tampered_ticket_rejected(keys: ServiceKeys) -> None:
    blob = seal_ticket(keys, issue_ticket("bob", Caps(admin=True), 1000.0, 600.0))
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= bit
            with pytest.raises(AuthError):
                open_ticket_untrusted(keys, bytes(bad), now=1001.0)


def test_tampered_ticket_messages(keys: ServiceKeys) -> None:
    blob = seal_ticket(keys, issue_ticket("bob", Caps(), 1000.0, 600.0))
    with pytest.raises(AuthError, match="malformed ticket"):
        open_ticket_untrusted(keys, b"X1" + blob[2:], now=1001.0)
    with pytest.raises(AuthError, match="does not verify"):
        open_ticket_untrusted(keys, blob[:-1] + bytes([blob[-1] ^ 1]), now=1001.0)
    with pytest.raises(AuthError, match="does not verify"):
        open_ticket_untrusted(keys, blob + b"\0", now=1001.0)


def test_truncated_ticket_rejected_at_every_prefix(keys: ServiceKeys) -> None:
    blob = seal_ticket(keys, issue_ticket("bob", Caps(), 1000.0, 600.0))
    for n in range(len(blob)):
        with pytest.raises(AuthError):
            open_ticket_untrusted(keys, blob[:n], now=1001.0)


def test_wrong_generation_rejected(keys: ServiceKeys) -> None:
    blob = seal_ticket(keys, issue_ticket("bob", Caps(), 1000.0, 600.0))
    other = ServiceKeys()
    other.rotate(1000.0, 3600.0, 3600.0)  # same generation number, different key
    with pytest.raises(AuthError, match="does not verify"):
        open_ticket_untrusted(other, blob, now=1001.0)
    with pytest.raises(AuthError, match="unknown service key generation 7"):
        open_ticket_untrusted(keys, blob[:2] + struct.pack(">I", 7) + blob[6:], now=1001.0)
    with pytest.raises(AuthError, match="unknown service key generation"):
        open_ticket_untrusted(ServiceKeys(), blob, now=1001.0)
    # A ticket moved to another generation of the same keyring fails: the AAD binds gen.
    keys.rotate(5000.0, 3600.0, 3600.0)
    with pytest.raises(AuthError, match="does not verify"):
        open_ticket_untrusted(keys, blob[:2] + struct.pack(">I", 2) + blob[6:], now=1001.0)


def test_expiry_is_strict(keys: ServiceKeys) -> None:
    blob = seal_ticket(keys, issue_ticket("bob", Caps(), 1000.0, 600.0))
    assert open_ticket_untrusted(keys, blob, now=1599.999).client == "bob"
    with pytest.raises(AuthError, match="expired"):
        open_ticket_untrusted(keys, blob, now=1600.0)
    with pytest.raises(AuthError, match="expired"):
        open_ticket_untrusted(keys, blob, now=1600.0 + MAX_CLOCK_SKEW - 1)


def test_future_issued_ticket_within_skew_only(keys: ServiceKeys) -> None:
    blob = seal_ticket(keys, issue_ticket("bob", Caps(), 1000.0, 6000.0))
    assert open_ticket_untrusted(keys, blob, now=1000.0 - MAX_CLOCK_SKEW).client == "bob"
    with pytest.raises(AuthError, match="issued in the future"):
        open_ticket_untrusted(keys, blob, now=1000.0 - MAX_CLOCK_SKEW - 0.5)


def _seal_raw_ticket(keys: ServiceKeys, body: bytes) -> bytes:
    """Seal arbitrary plaintext exactly as a ticket is sealed, to fuzz the inner parser."""
    sk = keys.current()
    header = b"T1" + struct.pack(">I", sk.gen)
    nonce = os.urandom(12)
    return header + nonce + AESGCM(sk.key).encrypt(nonce, body, b"store ticket v1" + header[2:])


GOOD_FIELDS: list[object] = [
    "bob",
    {"admin": False, "pools": {}},
    b"s" * 32,
    1000.0,
    2000.0,
    b"i" * 16,
]


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, "bad name"),
        (0, 5),
        (1, {"admin": "yes", "pools": {}}),
        (1, None),
        (2, b"short"),
        (2, "s" * 32),
        (3, float("nan")),
        (4, float("nan")),
        (4, float("inf")),
        (4, True),
        (5, b"i" * 15),
    ],
)
def test_authentic_but_malformed_ticket_body(keys: ServiceKeys, index: int, value: object) -> None:
    fields = list(GOOD_FIELDS)
    assert isinstance(
        open_ticket_untrusted(keys, _seal_raw_ticket(keys, msgpack.packb(fields)), 1001.0), Ticket
    )
    fields[index] = value
    with pytest.raises(AuthError, match="malformed ticket"):
        open_ticket_untrusted(keys, _seal_raw_ticket(keys, msgpack.packb(fields)), now=1001.0)


_fixed_keys = ServiceKeys([ServiceKey(1, b"\x07" * 32, 0.0)])


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_to_open_ticket_raise_only_auth_error(blob: bytes) -> None:
    for candidate in (blob, b"T1\0\0\0\x01" + blob):
        with pytest.raises(AuthError):
            open_ticket_untrusted(_fixed_keys, candidate, now=1.0)


_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=70)
    | st.binary(max_size=40)
)
_ticket_like = st.tuples(*(st.just(v) | _leaf | st.lists(_leaf, max_size=3) for v in GOOD_FIELDS))


@settings(max_examples=150)
@given(
    st.one_of(
        st.binary(max_size=100),
        st.lists(_leaf, max_size=7).map(msgpack.packb),
        _ticket_like.map(lambda t: msgpack.packb(list(t))),
    )
)
def test_authentic_random_body_raises_only_auth_error(body: bytes) -> None:
    sealed = _seal_raw_ticket(_fixed_keys, body)
    try:
        ticket = open_ticket_untrusted(_fixed_keys, sealed, now=1500.0)
    except AuthError:
        return
    # Only a body that is a well-formed ticket may open, and it opens to exactly that.
    opened: list[object] = [ticket.client, ticket.caps.to_wire(), ticket.session_key]
    opened += [ticket.issued, ticket.expires, ticket.ticket_id]
    assert opened == msgpack.unpackb(body)


# --- sealing for the client ------------------------------------------------------------


def test_seal_for_client_round_trip() -> None:
    secret = new_secret()
    session_key = os.urandom(32)
    payload = {"session_key": session_key, "expires": 12.5, "ticket": b"T1..."}
    blob = seal_for_client(secret, payload)
    assert session_key not in blob
    assert open_for_client(secret, blob) == payload
    with pytest.raises(AuthError, match="sealed reply does not verify: wrong key"):
        open_for_client(new_secret(), blob)
    with pytest.raises(AuthError, match="does not verify"):
        open_for_client(secret, blob[:-1] + bytes([blob[-1] ^ 1]))


def test_sealed_non_map_payload_rejected() -> None:
    secret = new_secret()
    key = HKDF(hashes.SHA256(), 32, None, b"store client seal v1").derive(secret)
    nonce = os.urandom(12)
    for body in (msgpack.packb([1, 2]), msgpack.packb({1: 2}), b"\xc1"):
        blob = b"C1" + nonce + AESGCM(key).encrypt(nonce, body, b"store client seal v1C1")
        with pytest.raises(AuthError, match="malformed"):
            open_for_client(secret, blob)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_to_open_for_client_raise_only_auth_error(blob: bytes) -> None:
    for candidate in (blob, b"C1" + blob):
        with pytest.raises(AuthError):
            open_for_client(b"\x05" * 32, candidate)


# --- daemon hello ----------------------------------------------------------------------

HELLO = {
    "session_key": b"\x11" * 32,
    "session_id": 42,
    "client_nonce": b"c" * 16,
    "timestamp": 1234.5,
    "osd_id": 3,
    "instance": 7,
}
HELLO_CHANGES = {
    "session_key": b"\x12" * 32,
    "session_id": 43,
    "client_nonce": b"c" * 15 + b"d",
    "timestamp": 1234.50001,
    "osd_id": 4,
    "instance": 8,
}
REPLY = {
    "session_key": b"\x11" * 32,
    "session_id": 42,
    "client_nonce": b"c" * 16,
    "server_nonce": b"s" * 16,
    "osd_id": 3,
}
REPLY_CHANGES = {
    "session_key": b"\x12" * 32,
    "session_id": 43,
    "client_nonce": b"c" * 17,
    "server_nonce": b"t" * 16,
    "osd_id": 4,
}


def test_hello_mac_verifies() -> None:
    mac = hello_mac(**HELLO)  # type: ignore[arg-type]
    assert len(mac) == 32
    assert verify_hello_mac(**HELLO, mac=mac)  # type: ignore[arg-type]
    assert not verify_hello_mac(**HELLO, mac=mac[:-1] + bytes([mac[-1] ^ 1]))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(HELLO_CHANGES))
def test_hello_mac_binds_every_field(name: str) -> None:
    mac = hello_mac(**HELLO)  # type: ignore[arg-type]
    changed = {**HELLO, name: HELLO_CHANGES[name]}
    assert not verify_hello_mac(**changed, mac=mac)  # type: ignore[arg-type]


def test_hello_reply_mac_verifies() -> None:
    mac = hello_reply_mac(**REPLY)  # type: ignore[arg-type]
    assert verify_hello_reply_mac(**REPLY, mac=mac)  # type: ignore[arg-type]
    assert not verify_hello_reply_mac(**REPLY, mac=b"")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(REPLY_CHANGES))
def test_hello_reply_mac_binds_every_field(name: str) -> None:
    mac = hello_reply_mac(**REPLY)  # type: ignore[arg-type]
    changed = {**REPLY, name: REPLY_CHANGES[name]}
    assert not verify_hello_reply_mac(**changed, mac=mac)  # type: ignore[arg-type]


def test_hello_nonces_are_not_ambiguous() -> None:
    # Moving a byte from one nonce to the other must change the MAC.
    a = hello_reply_mac(b"k" * 32, 1, b"ab", b"c", 0)
    b = hello_reply_mac(b"k" * 32, 1, b"a", b"bc", 0)
    assert a != b


def test_hello_and_reply_are_domain_separated() -> None:
    key, nonce = b"k" * 32, b"n" * 16
    assert hello_mac(key, 1, nonce, 0.0, 2) != hello_reply_mac(key, 1, nonce, b"", 2)
    assert not verify_hello_reply_mac(key, 1, nonce, b"", 2, hello_mac(key, 1, nonce, 0.0, 2))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("session_id", -1),
        ("session_id", 2**64),
        ("osd_id", 2**32),
        ("osd_id", True),
        ("client_nonce", b"x" * 65536),
        ("client_nonce", "text"),
        ("timestamp", "now"),
    ],
)
def test_hello_out_of_range_fields(field: str, value: object) -> None:
    fields = {**HELLO, field: value}
    with pytest.raises(AuthError):
        hello_mac(**fields)  # type: ignore[arg-type]
    assert not verify_hello_mac(**fields, mac=b"\0" * 32)  # type: ignore[arg-type]
