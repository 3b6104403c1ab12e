"""Client keys, tickets, capabilities and the proofs that tie them together.

Theory of operation
-------------------
The scheme follows cephx. An admin creates a client: a name, a 32-byte secret and
capabilities (per pool `r` or `rw`, or `admin`). The secret lives in the client's key
file and in the master's database; it never crosses the network.

1. Login (client <-> master, over TLS). The master sends a random challenge; the client
   answers with `client_proof`, an HMAC of the challenge and its own nonce keyed by its
   secret. The master recomputes it (`verify_proof`).
2. The master issues a `Ticket` (client, caps, a fresh session key, issue and expiry
   times) and seals it with the current *service key* (`seal_ticket`). Only the master
   and the storage daemons hold service keys, so the client carries the ticket without
   being able to read or alter it. The master also seals the session key, the expiry
   and the ticket for the client with a key derived from the client's secret
   (`seal_for_client`): only the holder of the secret learns the session key.
3. Hello (client -> daemon, UDP). The client sends the sealed ticket once, with a MAC
   made with the session key (`hello_mac`). The daemon opens the ticket
   (`open_ticket_untrusted`), checks expiry and caps, verifies the MAC, and answers
   with `hello_reply_mac`, which proves it could open the ticket. Every later datagram
   of the session is authenticated with keys derived from the session key.

Service keys rotate (`ServiceKeys.rotate`). A ticket names the generation that sealed
it; an older generation stays known for as long as a ticket sealed with it can still
be unexpired, i.e. until `ticket_ttl` after its successor was made.

Every MAC and AEAD input starts with a distinct domain-separation prefix, so a value
computed for one purpose can never be replayed as another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import math
import os
import re
import struct
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from store.errors import AuthError, ConfigError, ProtocolError, StoreError

SECRET_SIZE = 32
SESSION_KEY_SIZE = 32
SERVICE_KEY_SIZE = 32
CHALLENGE_SIZE = 32
TICKET_ID_SIZE = 16
NONCE_SIZE = 12  # AES-GCM nonce
TAG_SIZE = 16  # AES-GCM tag
MAX_CLOCK_SKEW = 300.0

WILDCARD_POOL = "*"
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_POOL_PATTERN_RE = re.compile(r"\*|[A-Za-z0-9_.-]{1,64}")  # pool names follow client names
_MODES = ("r", "rw")

_PROOF_PREFIX = b"store-auth v1\0"
_TICKET_MAGIC = b"T1"
_TICKET_AAD = b"store ticket v1"
_TICKET_HEADER = struct.Struct(">2sI")
_CLIENT_SEAL_MAGIC = b"C1"
_CLIENT_SEAL_INFO = b"store client seal v1"
_HELLO_PREFIX = b"store hello v1\0"
_HELLO_REPLY_PREFIX = b"store hello reply v1\0"


def new_secret() -> bytes:
    return os.urandom(SECRET_SIZE)


def is_valid_client_name(name: str) -> bool:
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def _is_valid_pool_pattern(pool: object) -> bool:
    return isinstance(pool, str) and _POOL_PATTERN_RE.fullmatch(pool) is not None


# --- key files -------------------------------------------------------------------------


def write_keyfile(path: str | os.PathLike[str], name: str, secret: bytes) -> None:
    """Write a client's keyring, readable by its owner only from the first byte on."""
    if not is_valid_client_name(name):
        raise ConfigError(f"bad client name {name!r}: use 1-64 characters of A-Z a-z 0-9 _ . -")
    if len(secret) != SECRET_SIZE:
        raise ConfigError(f"client secret must be {SECRET_SIZE} bytes, not {len(secret)}")
    text = f'[client]\nname = "{name}"\nkey = "{base64.b64encode(secret).decode("ascii")}"\n'
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # O_CREAT's mode is ignored for an existing file: tighten it before the key goes in.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def read_keyfile(path: str | os.PathLike[str]) -> tuple[str, bytes]:
    """Return (client name, secret) from a key file written by `write_keyfile`."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"key file {where} does not exist: ask an admin for one") from None
    except OSError as e:
        raise ConfigError(f"cannot read key file {where}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"key file {where} is not valid TOML: {e}") from None
    client = doc.get("client")
    if not isinstance(client, dict):
        raise ConfigError(f"key file {where} has no [client] table")
    name, key = client.get("name"), client.get("key")
    if not isinstance(name, str):
        raise ConfigError(f'key file {where}: [client] needs name = "<client name>"')
    if not isinstance(key, str):
        raise ConfigError(f'key file {where}: [client] needs key = "<base64 secret>"')
    if not is_valid_client_name(name):
        raise ConfigError(f"key file {where}: bad client name {name!r}")
    try:
        secret = base64.b64decode(key, validate=True)
    except ValueError:
        raise ConfigError(f"key file {where}: key is not valid base64") from None
    if len(secret) != SECRET_SIZE:
        raise ConfigError(
            f"key file {where}: key must decode to {SECRET_SIZE} bytes, not {len(secret)}"
        )
    return name, secret


# --- capabilities ----------------------------------------------------------------------


class _PoolModes(Mapping[str, str]):
    """An immutable, hashable pool -> mode mapping, so `Caps` can be frozen for real."""

    __slots__ = ("_modes",)

    def __init__(self, modes: Mapping[str, str]) -> None:
        self._modes = dict(modes)

    def __getitem__(self, pool: str) -> str:
        return self._modes[pool]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modes)

    def __len__(self) -> int:
        return len(self._modes)

    def __hash__(self) -> int:
        return hash(frozenset(self._modes.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._modes == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._modes)


_CAPS_FORM = "expected POOL=r or POOL=rw (POOL may be * for every pool)"


@dataclass(frozen=True)
class Caps:
    """What a client may do: everything (`admin`) or read / read-write per pool."""

    admin: bool = False
    pools: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pool, mode in self.pools.items():
            if not _is_valid_pool_pattern(pool) or mode not in _MODES:
                raise ConfigError(f"bad capability {pool!r}={mode!r}: {_CAPS_FORM}")
        object.__setattr__(self, "pools", _PoolModes(self.pools))

    @classmethod
    def parse(cls, specs: Iterable[str], admin: bool = False) -> Caps:
        if isinstance(specs, str):
            specs = (specs,)
        pools: dict[str, str] = {}
        for spec in specs:
            pool, sep, mode = spec.strip().partition("=")
            pool, mode = pool.strip(), mode.strip()
            if not sep or not _is_valid_pool_pattern(pool) or mode not in _MODES:
                raise ConfigError(f"bad capability {spec!r}: {_CAPS_FORM}")
            if pool in pools:
                raise ConfigError(f"capability for pool {pool!r} given twice")
            pools[pool] = mode
        return cls(admin=admin, pools=pools)

    def allows(self, pool: str, write: bool) -> bool:
        if self.admin:
            return True
        # An exact entry wins over the wildcard, so `images=r` narrows `*=rw`.
        mode = self.pools.get(pool, self.pools.get(WILDCARD_POOL))
        if mode is None:
            return False
        return mode == "rw" if write else True

    def to_wire(self) -> dict[str, Any]:
        return {"admin": self.admin, "pools": dict(self.pools)}

    @classmethod
    def from_wire(cls, d: object) -> Caps:
        """Rebuild caps from `to_wire` output; raises ProtocolError if it is not that."""
        if not isinstance(d, dict):
            raise ProtocolError("capabilities: expected a map")
        admin, pools = d.get("admin"), d.get("pools")
        if not isinstance(admin, bool) or not isinstance(pools, dict):
            raise ProtocolError("capabilities: expected admin (bool) and pools (map)")
        try:
            return cls(admin=admin, pools=pools)
        except ConfigError as e:
            raise ProtocolError(f"capabilities: {e}") from None

    def describe(self) -> str:
        if self.admin:
            return "admin"
        if not self.pools:
            return "none"
        return ", ".join(f"{pool}={self.pools[pool]}" for pool in sorted(self.pools))


# --- challenge-response with the master ------------------------------------------------


def new_challenge() -> bytes:
    return os.urandom(CHALLENGE_SIZE)


def client_proof(secret: bytes, name: str, challenge: bytes, client_nonce: bytes) -> bytes:
    message = _PROOF_PREFIX + name.encode() + b"\0" + challenge + client_nonce
    return hmac.new(secret, message, hashlib.sha256).digest()


def verify_proof(
    secret: bytes, name: str, challenge: bytes, client_nonce: bytes, proof: bytes
) -> bool:
    if not is_valid_client_name(name) or not isinstance(proof, bytes):
        return False
    return hmac.compare_digest(client_proof(secret, name, challenge, client_nonce), proof)


# --- service keys ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceKey:
    gen: int
    key: bytes = field(repr=False)
    created: float


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


class ServiceKeys:
    """The generations of the key that seals tickets, newest last."""

    def __init__(self, generations: Iterable[ServiceKey] = ()) -> None:
        self._by_gen: dict[int, ServiceKey] = {}
        for sk in generations:
            self._by_gen[sk.gen] = sk

    def generations(self) -> list[ServiceKey]:
        return [self._by_gen[g] for g in sorted(self._by_gen)]

    def current(self) -> ServiceKey:
        if not self._by_gen:
            raise AuthError("no service key yet: the master has not made one")
        return self._by_gen[max(self._by_gen)]

    def get(self, gen: int) -> ServiceKey | None:
        return self._by_gen.get(gen)

    def rotate(self, now: float, rotation_interval: float, ticket_ttl: float) -> bool:
        """Make a new generation when due and forget those no live ticket can use.

        `ticket_ttl` must be the longest lifetime the master gives a ticket: a generation
        stops sealing when its successor is made, so its last ticket expires `ticket_ttl`
        after that.
        """
        changed = False
        gens = self.generations()
        for older, newer in itertools.pairwise(gens):
            if now > newer.created + ticket_ttl:
                del self._by_gen[older.gen]
                changed = True
        if not self._by_gen or now - self.current().created >= rotation_interval:
            gen = self.current().gen + 1 if self._by_gen else 1
            self._by_gen[gen] = ServiceKey(gen, os.urandom(SERVICE_KEY_SIZE), now)
            changed = True
        return changed

    def to_wire(self) -> list[list[Any]]:
        return [[sk.gen, sk.key, sk.created] for sk in self.generations()]

    @classmethod
    def from_wire(cls, data: object) -> ServiceKeys:
        """Rebuild from `to_wire` output; raises ProtocolError if it is not that."""
        if not isinstance(data, list | tuple):
            raise ProtocolError("service keys: expected a list")
        keys: list[ServiceKey] = []
        for item in data:
            if not isinstance(item, list | tuple) or len(item) != 3:
                raise ProtocolError("service keys: expected [gen, key, created] entries")
            gen, key, created = item
            if not _is_int(gen) or not 1 <= gen < 2**32:
                raise ProtocolError(f"service keys: bad generation {gen!r}")
            if not isinstance(key, bytes) or len(key) != SERVICE_KEY_SIZE:
                raise ProtocolError(f"service keys: generation {gen} has a bad key")
            if not _is_finite(created):
                raise ProtocolError(f"service keys: generation {gen} has a bad time")
            if any(k.gen == gen for k in keys):
                raise ProtocolError(f"service keys: generation {gen} given twice")
            keys.append(ServiceKey(gen, key, float(created)))
        return cls(keys)


# --- tickets ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    client: str
    caps: Caps
    session_key: bytes = field(repr=False)
    issued: float
    expires: float
    ticket_id: bytes


def issue_ticket(client: str, caps: Caps, now: float, ttl: float) -> Ticket:
    if not is_valid_client_name(client):
        raise AuthError(f"cannot issue a ticket to bad client name {client!r}")
    return Ticket(
        client=client,
        caps=caps,
        session_key=os.urandom(SESSION_KEY_SIZE),
        issued=now,
        expires=now + ttl,
        ticket_id=os.urandom(TICKET_ID_SIZE),
    )


def seal_ticket(keys: ServiceKeys, ticket: Ticket) -> bytes:
    sk = keys.current()
    header = _TICKET_HEADER.pack(_TICKET_MAGIC, sk.gen)
    nonce = os.urandom(NONCE_SIZE)
    t = ticket
    fields = [t.client, t.caps.to_wire(), t.session_key, float(t.issued), float(t.expires)]
    body = msgpack.packb([*fields, t.ticket_id], use_bin_type=True)
    return header + nonce + AESGCM(sk.key).encrypt(nonce, body, _TICKET_AAD + header[2:])


def _ticket_from_body_untrusted(body: bytes) -> Ticket:
    malformed = AuthError("malformed ticket")
    try:
        fields = msgpack.unpackb(body, raw=False)
    except Exception:  # msgpack raises a zoo of types on bad input
        raise malformed from None
    if not isinstance(fields, list) or len(fields) != 6:
        raise malformed
    client, caps_wire, session_key, issued, expires, ticket_id = fields
    if (
        not is_valid_client_name(client)
        or not isinstance(session_key, bytes)
        or len(session_key) != SESSION_KEY_SIZE
        or not _is_finite(issued)
        or not _is_finite(expires)
        or not isinstance(ticket_id, bytes)
        or len(ticket_id) != TICKET_ID_SIZE
    ):
        raise malformed
    try:
        caps = Caps.from_wire(caps_wire)
    except StoreError:
        raise malformed from None
    return Ticket(client, caps, session_key, float(issued), float(expires), ticket_id)


def open_ticket_untrusted(keys: ServiceKeys, blob: bytes, now: float) -> Ticket:
    """Open a sealed ticket and check its times; raises only AuthError."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise AuthError("malformed ticket")
    blob = bytes(blob)
    if len(blob) < _TICKET_HEADER.size + NONCE_SIZE + TAG_SIZE:
        raise AuthError("malformed ticket")
    magic, gen = _TICKET_HEADER.unpack_from(blob)
    if magic != _TICKET_MAGIC:
        raise AuthError("malformed ticket")
    sk = keys.get(gen)
    if sk is None:
        raise AuthError(f"unknown service key generation {gen}: get a new ticket")
    nonce = blob[_TICKET_HEADER.size : _TICKET_HEADER.size + NONCE_SIZE]
    sealed = blob[_TICKET_HEADER.size + NONCE_SIZE :]
    aad = _TICKET_AAD + blob[2 : _TICKET_HEADER.size]
    try:
        body = AESGCM(sk.key).decrypt(nonce, sealed, aad)
    except InvalidTag:
        raise AuthError("ticket does not verify") from None
    ticket = _ticket_from_body_untrusted(body)
    if now >= ticket.expires:
        raise AuthError("ticket expired: get a new ticket")
    if ticket.issued > now + MAX_CLOCK_SKEW:
        raise AuthError(
            f"ticket issued in the future: clocks differ by more than {MAX_CLOCK_SKEW:g} s"
        )
    return ticket


# --- sealing for the client ------------------------------------------------------------


def _client_seal_key(secret: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CLIENT_SEAL_INFO)
    return hkdf.derive(secret)


def seal_for_client(secret: bytes, payload: dict[str, Any]) -> bytes:
    """Seal a reply only the holder of `secret` can open: magic, nonce, AES-GCM."""
    nonce = os.urandom(NONCE_SIZE)
    body = msgpack.packb(payload, use_bin_type=True)
    aad = _CLIENT_SEAL_INFO + _CLIENT_SEAL_MAGIC
    return _CLIENT_SEAL_MAGIC + nonce + AESGCM(_client_seal_key(secret)).encrypt(nonce, body, aad)


def open_for_client(secret: bytes, blob: bytes) -> dict[str, Any]:
    """Open `seal_for_client` output; raises only AuthError."""
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise AuthError("sealed reply is malformed")
    blob = bytes(blob)
    header = len(_CLIENT_SEAL_MAGIC)
    if len(blob) < header + NONCE_SIZE + TAG_SIZE or blob[:header] != _CLIENT_SEAL_MAGIC:
        raise AuthError("sealed reply is malformed")
    nonce, sealed = blob[header : header + NONCE_SIZE], blob[header + NONCE_SIZE :]
    try:
        body = AESGCM(_client_seal_key(secret)).decrypt(
            nonce, sealed, _CLIENT_SEAL_INFO + _CLIENT_SEAL_MAGIC
        )
    except InvalidTag:
        raise AuthError("sealed reply does not verify: wrong key?") from None
    try:
        payload = msgpack.unpackb(body, raw=False)
    except Exception:  # msgpack raises a zoo of types on bad input
        raise AuthError("sealed reply is malformed") from None
    if not isinstance(payload, dict) or not all(isinstance(k, str) for k in payload):
        raise AuthError("sealed reply is malformed")
    return payload


# --- daemon session hello --------------------------------------------------------------


def _length_prefixed(data: bytes) -> bytes:
    if not isinstance(data, bytes) or len(data) > 0xFFFF:
        raise AuthError("hello nonce must be bytes of at most 65535")
    return struct.pack(">H", len(data)) + data


def _ids(session_id: int, osd_id: int) -> bytes:
    if not _is_int(session_id) or not 0 <= session_id < 2**64:
        raise AuthError(f"session id out of range: {session_id!r}")
    if not _is_int(osd_id) or not 0 <= osd_id < 2**32:
        raise AuthError(f"osd id out of range: {osd_id!r}")
    return struct.pack(">QI", session_id, osd_id)


def hello_mac(
    session_key: bytes,
    session_id: int,
    client_nonce: bytes,
    timestamp: float,
    osd_id: int,
    instance: int = 0,
) -> bytes:
    """The client's proof, in its HELLO to one daemon, that it holds the session key.

    `instance` (the client process's id, which makes its request ids unique) is bound in
    too: the daemon deduplicates writes by it, so nobody on the path may change it.
    """
    if not isinstance(timestamp, int | float) or isinstance(timestamp, bool):
        raise AuthError(f"hello timestamp must be a number: {timestamp!r}")
    if not isinstance(instance, int) or not 0 <= instance < 2**64:
        raise AuthError(f"client instance out of range: {instance!r}")
    ids, when = _ids(session_id, osd_id), struct.pack(">dQ", timestamp, instance)
    message = _HELLO_PREFIX + ids + when + _length_prefixed(client_nonce)
    return hmac.new(session_key, message, hashlib.sha256).digest()


def verify_hello_mac(
    session_key: bytes,
    session_id: int,
    client_nonce: bytes,
    timestamp: float,
    osd_id: int,
    mac: bytes,
    instance: int = 0,
) -> bool:
    try:
        expected = hello_mac(session_key, session_id, client_nonce, timestamp, osd_id, instance)
    except AuthError:
        return False
    return isinstance(mac, bytes) and hmac.compare_digest(expected, mac)


def hello_reply_mac(
    session_key: bytes, session_id: int, client_nonce: bytes, server_nonce: bytes, osd_id: int
) -> bytes:
    """The daemon's proof that it opened the ticket (only then does it know the key)."""
    message = (
        _HELLO_REPLY_PREFIX
        + _ids(session_id, osd_id)
        + _length_prefixed(client_nonce)
        + _length_prefixed(server_nonce)
    )
    return hmac.new(session_key, message, hashlib.sha256).digest()


def verify_hello_reply_mac(
    session_key: bytes,
    session_id: int,
    client_nonce: bytes,
    server_nonce: bytes,
    osd_id: int,
    mac: bytes,
) -> bool:
    try:
        expected = hello_reply_mac(session_key, session_id, client_nonce, server_nonce, osd_id)
    except AuthError:
        return False
    return isinstance(mac, bytes) and hmac.compare_digest(expected, mac)
