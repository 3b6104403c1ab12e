"""Image names, sizes and the header codec (no I/O)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.image.errors import DamagedHeader, InvalidImageArgument
from store.image.lock import Lock
from store.image.model import (
    GiB,
    ImageHeader,
    KiB,
    MiB,
    check_image_name,
    check_object_size,
    data_index,
    data_object,
    format_size,
    header_object,
    new_image_id,
    parse_image_spec,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("10G", 10 * GiB),
        ("10GiB", 10 * GiB),
        ("4m", 4 * MiB),
        ("512K", 512 * KiB),
        ("4096", 4096),
        ("1.5G", 3 * GiB // 2),
        ("1T", 1 << 40),
        (" 2 M ", 2 * MiB),
        ("0", 0),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "ten", "-1G", "1.3", "1e9", "5X", "0.1K"])
def test_parse_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(InvalidImageArgument):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(10 * GiB) == "10 GiB"
    assert format_size(3 * GiB // 2) == "1.50 GiB"
    assert format_size(100) == "100 B"


def test_object_size_is_a_power_of_two_in_range() -> None:
    assert check_object_size(4 * MiB) == 4 * MiB
    for bad in (0, 3 * MiB, 2 * KiB, 64 * MiB):
        with pytest.raises(InvalidImageArgument):
            check_object_size(bad)


def test_image_specs_and_names() -> None:
    assert parse_image_spec("rbd/vm-disk.1") == ("rbd", "vm-disk.1")
    for bad in ("noslash", "/name", "pool/", "pool/a/b", "pool/tab\there", "p/" + "x" * 300):
        with pytest.raises(InvalidImageArgument):
            parse_image_spec(bad)
    assert check_image_name("ünïcode") == "ünïcode"


def test_object_names_follow_rbd() -> None:
    image_id = new_image_id()
    assert len(image_id) == 16 and int(image_id, 16) >= 0
    assert header_object(image_id) == f"rbd_header.{image_id}"
    assert data_object(image_id, 1280) == f"rbd_data.{image_id}.0000000000000500"
    assert data_index(data_object(image_id, 1280), image_id) == 1280
    assert data_index(f"rbd_data.{image_id}.xyz", image_id) is None
    assert data_index(data_object("0" * 16, 1), image_id) is None


def header(**changes: object) -> ImageHeader:
    base: dict[str, object] = {
        "id": "0123456789abcdef",
        "name": "disk",
        "size": 10 * GiB,
        "object_size": 4 * MiB,
        "created": 1700000000.5,
    }
    base.update(changes)
    return ImageHeader(**base)  # type: ignore[arg-type]


def test_header_round_trip() -> None:
    plain = header()
    assert ImageHeader.decode_untrusted(plain.encode(), "p/disk") == plain
    locked = header(lock=Lock(holder="h1", owner="nbdkit on host", expires=1.5), removing=True)
    assert ImageHeader.decode_untrusted(locked.encode(), "p/disk") == locked
    assert plain.object_count == 2560
    assert header(size=4 * MiB + 1).object_count == 2
    assert header(size=0).object_count == 0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format=2),
        lambda d: d.update(size=-1),
        lambda d: d.update(size=True),
        lambda d: d.update(object_size=3000),
        lambda d: d.update(id="not-hex"),
        lambda d: d.update(name="a/b"),
        lambda d: d.update(created=float("nan")),
        lambda d: d.update(lock={"holder": "", "owner": "x", "expires": 1}),
        lambda d: d.update(lock=[1, 2]),
        lambda d: d.update(removing=0),
        lambda d: d.pop("size"),
    ],
)
def test_damaged_headers_are_refused(mutate: object) -> None:
    body = msgpack.unpackb(header().encode())
    mutate(body)  # type: ignore[operator]
    with pytest.raises(DamagedHeader, match="p/disk"):
        ImageHeader.decode_untrusted(msgpack.packb(body), "p/disk")


@given(st.binary(max_size=200))
def test_any_bytes_decode_or_raise_damaged(raw: bytes) -> None:
    try:
        ImageHeader.decode_untrusted(raw, "p/x")
    except DamagedHeader:
        pass
