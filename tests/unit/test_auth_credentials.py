"""A client's credentials: names, key files, capabilities, the proof of its key."""

from __future__ import annotations

import base64
import os
import stat
import tomllib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.auth import (
    SECRET_SIZE,
    Caps,
    client_proof,
    is_valid_client_name,
    new_challenge,
    new_secret,
    read_keyfile,
    verify_proof,
    write_keyfile,
)
from store.errors import ConfigError, ProtocolError

# --- names and secrets -----------------------------------------------------------------


def test_new_secret_is_fresh_and_sized() -> None:
    a, b = new_secret(), new_secret()
    assert len(a) == SECRET_SIZE == 32
    assert a != b


@pytest.mark.parametrize("name", ["admin", "a", "a" * 64, "x.y-z_1", "CLIENT.9"])
def test_valid_client_names(name: str) -> None:
    assert is_valid_client_name(name)


@pytest.mark.parametrize("name", ["", "a" * 65, "a b", "admin\n", "é", "a/b", 'a"b', "a=b"])
def test_invalid_client_names(name: str) -> None:
    assert not is_valid_client_name(name)


# --- key files -------------------------------------------------------------------------


def test_keyfile_round_trip_and_format(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    secret = new_secret()
    write_keyfile(path, "admin", secret)
    assert read_keyfile(path) == ("admin", secret)
    doc = tomllib.loads(path.read_text())
    assert doc == {"client": {"name": "admin", "key": base64.b64encode(secret).decode()}}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_keyfile_overwrite_tightens_mode(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("old")
    os.chmod(path, 0o644)
    secret = new_secret()
    write_keyfile(str(path), "bob", secret)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_keyfile(str(path)) == ("bob", secret)


def test_keyfile_new_file_created_private_despite_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_keyfile(tmp_path / "k", "bob", new_secret())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_write_keyfile_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client name"):
        write_keyfile(tmp_path / "k", "bad name", new_secret())
    with pytest.raises(ConfigError, match="32 bytes"):
        write_keyfile(tmp_path / "k", "bob", b"short")
    assert not (tmp_path / "k").exists()


GOOD_KEY = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[client\nname=", "not valid TOML"),
        (b"\xff\xfe".decode("latin-1"), "not valid TOML"),
        ('name = "a"\n', r"no \[client\] table"),
        ('client = "a"\n', r"no \[client\] table"),
        (f'[client]\nkey = "{GOOD_KEY}"\n', "needs name"),
        (f'[client]\nname = 5\nkey = "{GOOD_KEY}"\n', "needs name"),
        ('[client]\nname = "a"\n', "needs key"),
        (f'[client]\nname = "a b"\nkey = "{GOOD_KEY}"\n', "bad client name"),
        ('[client]\nname = "a"\nkey = "not*base64!"\n', "not valid base64"),
        ('[client]\nname = "a"\nkey = "é"\n', "not valid base64"),
        (f'[client]\nname = "a"\nkey = "{base64.b64encode(b"x" * 31).decode()}"\n', "32 bytes"),
        (f'[client]\nname = "a"\nkey = "{base64.b64encode(b"x" * 33).decode()}"\n', "32 bytes"),
    ],
)
def test_read_keyfile_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "k"
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(ConfigError, match=message):
        read_keyfile(path)


def test_read_keyfile_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_keyfile(tmp_path / "nope")


def test_read_keyfile_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file"):
        read_keyfile(tmp_path)  # a directory


# --- capabilities ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("specs", "admin", "pool", "write", "allowed"),
    [
        ([], False, "default", False, False),
        ([], True, "default", True, True),
        (["default=r"], True, "other", True, True),
        (["default=rw"], False, "default", False, True),
        (["default=rw"], False, "default", True, True),
        (["default=r"], False, "default", False, True),
        (["default=r"], False, "default", True, False),
        (["default=rw"], False, "images", False, False),
        (["*=r"], False, "anything", False, True),
        (["*=r"], False, "anything", True, False),
        (["*=rw"], False, "anything", True, True),
        (["*=rw", "images=r"], False, "images", True, False),  # exact entry narrows
        (["*=rw", "images=r"], False, "images", False, True),
        (["*=r", "images=rw"], False, "images", True, True),  # exact entry widens
        (["*=r", "images=rw"], False, "other", True, False),
        ([" default = rw "], False, "default", True, True),
    ],
)
def test_caps_allow_matrix(
    specs: list[str], admin: bool, pool: str, write: bool, allowed: bool
) -> None:
    assert Caps.parse(specs, admin=admin).allows(pool, write) is allowed


@pytest.mark.parametrize(
    "spec", ["default", "default=", "=rw", "default=w", "default=rwx", "a b=r", "d=r=r", "**=r"]
)
def test_caps_bad_specs(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"POOL=r or POOL=rw"):
        Caps.parse([spec])


def test_caps_duplicate_pool_rejected() -> None:
    with pytest.raises(ConfigError, match="twice"):
        Caps.parse(["a=r", "a=rw"])


def test_caps_parse_single_string_is_one_spec() -> None:
    assert Caps.parse("images=r") == Caps(pools={"images": "r"})


def test_caps_constructor_validates() -> None:
    with pytest.raises(ConfigError):
        Caps(pools={"x": "q"})
    with pytest.raises(ConfigError):
        Caps(pools={"bad pool": "r"})


def test_caps_frozen_hashable_and_comparable() -> None:
    pools = {"default": "rw", "images": "r"}
    caps = Caps(pools=pools)
    pools["default"] = "r"  # the caller's dict is copied, not shared
    assert caps.allows("default", True)
    assert caps == Caps.parse(["images=r", "default=rw"])
    assert caps != Caps.parse(["images=r", "default=r"])
    assert caps != Caps(admin=True, pools={"default": "rw", "images": "r"})
    assert hash(caps) == hash(Caps.parse(["default=rw", "images=r"]))
    assert len({caps, Caps.parse(["default=rw", "images=r"]), Caps()}) == 2
    assert caps.pools == {"default": "rw", "images": "r"}
    with pytest.raises(TypeError):
        caps.pools["x"] = "r"  # type: ignore[index]


def test_caps_describe() -> None:
    assert Caps(admin=True, pools={"a": "r"}).describe() == "admin"
    assert Caps.parse(["images=r", "default=rw"]).describe() == "default=rw, images=r"
    assert Caps().describe() == "none"


caps_strategy = st.builds(
    Caps,
    admin=st.booleans(),
    pools=st.dictionaries(
        st.one_of(st.just("*"), st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True)),
        st.sampled_from(["r", "rw"]),
        max_size=5,
    ),
)


@given(caps_strategy)
def test_caps_wire_round_trip(caps: Caps) -> None:
    wire = msgpack.unpackb(msgpack.packb(caps.to_wire()), raw=False)
    assert Caps.from_wire(wire) == caps


@pytest.mark.parametrize(
    "wire",
    [
        None,
        [],
        {"admin": 1, "pools": {}},
        {"admin": False},
        {"admin": False, "pools": []},
        {"admin": False, "pools": {"a": "x"}},
        {"admin": False, "pools": {b"a": "r"}},
    ],
)
def test_caps_from_wire_rejects(wire: object) -> None:
    with pytest.raises(ProtocolError):
        Caps.from_wire(wire)


# --- challenge-response ----------------------------------------------------------------


def test_proof_matches_documented_construction() -> None:
    import hashlib
    import hmac

    secret, ch, cn = new_secret(), new_challenge(), os.urandom(16)
    expected = hmac.new(secret, b"store-auth v1\0bob\0" + ch + cn, hashlib.sha256).digest()
    assert client_proof(secret, "bob", ch, cn) == expected
    assert len(new_challenge()) == 32 and new_challenge() != new_challenge()


def test_proof_binds_every_input() -> None:
    secret, ch, cn = new_secret(), new_challenge(), os.urandom(16)
    proof = client_proof(secret, "bob", ch, cn)
    assert verify_proof(secret, "bob", ch, cn, proof)
    assert not verify_proof(new_secret(), "bob", ch, cn, proof)
    assert not verify_proof(secret, "bobb", ch, cn, proof)
    assert not verify_proof(secret, "bob", new_challenge(), cn, proof)
    assert not verify_proof(secret, "bob", ch, os.urandom(16), proof)
    assert not verify_proof(secret, "bob", ch, cn, proof[:-1])
    assert not verify_proof(secret, "bad name", ch, cn, client_proof(secret, "bad name", ch, cn))
