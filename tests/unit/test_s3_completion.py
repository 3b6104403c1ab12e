"""Completing a multipart upload: the parts list, the choice of parts, object checksums."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from store.gateways.s3 import checksums
from store.gateways.s3.completion import choose_parts, object_checksum, requested_parts
from store.gateways.s3.conditions import DeleteCondition, delete_condition
from store.gateways.s3.errors import S3Error
from store.gateways.s3.layout import PartEntry
from store.gateways.s3.multipart import MIN_PART_SIZE

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def body(*parts: tuple[int, str], extra: str = "") -> bytes:
    items = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag>{extra}</Part>" for n, e in parts
    )
    return f'<CompleteMultipartUpload xmlns="{NS}">{items}</CompleteMultipartUpload>'.encode()


def test_requested_parts_strip_quotes_and_read_checksums() -> None:
    parsed = requested_parts(
        body((1, '"AB"'), (3, "cd"), extra="<ChecksumCRC32>AAAAAA==</ChecksumCRC32>")
    )
    assert [(r.number, r.etag, r.checksums) for r in parsed] == [
        (1, "ab", {"crc32": "AAAAAA=="}),
        (3, "cd", {"crc32": "AAAAAA=="}),
    ]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (body((2, "a"), (1, "b")), "InvalidPartOrder"),
        (body((1, "a"), (1, "a")), "InvalidPartOrder"),
        (body(), "MalformedXML"),
        (
            b"<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>",
            "MalformedXML",
        ),
        (b"<Other/>", "MalformedXML"),
    ],
)
def test_bad_parts_lists(raw: bytes, code: str) -> None:
    with pytest.raises(S3Error) as caught:
        requested_parts(raw)
    assert caught.value.code == code


def part(
    number: int, size: int, data: bytes = b"", checksum: tuple[str, str] | None = None
) -> PartEntry:
    return PartEntry(number, f"h{number}", size, hashlib.md5(data).hexdigest(), 0.0, checksum)


def test_choose_parts() -> None:
    uploaded = [part(1, MIN_PART_SIZE, b"1"), part(2, 10, b"2"), part(3, 10, b"3")]
    chosen = choose_parts(
        requested_parts(body((1, uploaded[0].etag), (3, uploaded[2].etag))), uploaded
    )
    assert [p.number for p in chosen] == [1, 3]
    with pytest.raises(S3Error, match="InvalidPart"):
        choose_parts(requested_parts(body((1, "0" * 32))), uploaded)
    with pytest.raises(S3Error, match="InvalidPart"):
        choose_parts(requested_parts(body((4, uploaded[0].etag))), uploaded)
    with pytest.raises(S3Error) as caught:
        choose_parts(requested_parts(body((2, uploaded[1].etag), (3, uploaded[2].etag))), uploaded)
    assert caught.value.code == "EntityTooSmall"
    assert caught.value.fields["PartNumber"] == "2"


def crc32(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_full_object_crc_is_the_crc_of_all_bytes() -> None:
    pieces = [b"a" * 1000, b"b" * 77, b"c"]
    parts = [part(i + 1, len(p), p, ("crc32", crc32(p))) for i, p in enumerate(pieces)]
    assert object_checksum("crc32", "FULL_OBJECT", parts) == crc32(b"".join(pieces))


def test_composite_checksum_is_the_digest_of_digests() -> None:
    pieces = [b"one", b"two"]
    parts = [
        part(i + 1, len(p), p, ("sha256", checksums.digest_b64("sha256", p)))
        for i, p in enumerate(pieces)
    ]
    expected = hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in pieces)).digest()
    assert (
        object_checksum("sha256", "COMPOSITE", parts) == base64.b64encode(expected).decode() + "-2"
    )


def test_a_part_without_the_checksum_is_refused() -> None:
    with pytest.raises(S3Error, match="InvalidRequest"):
        object_checksum("sha256", "COMPOSITE", [part(1, 3, b"abc")])


def test_conditional_delete() -> None:
    condition = delete_condition('"abc"', None, "10")
    condition.check(None, 0, 0)  # nothing there: nothing to refuse
    condition.check("abc", 5.0, 10)
    with pytest.raises(S3Error, match="PreconditionFailed"):
        condition.check("abd", 5.0, 10)
    with pytest.raises(S3Error, match="PreconditionFailed"):
        condition.check("abc", 5.0, 11)
    dated = delete_condition(None, "2024-01-01T00:00:00Z", None)
    dated.check("x", 1704067200.9, 1)
    with pytest.raises(S3Error, match="PreconditionFailed"):
        dated.check("x", 1704067300.0, 1)
    assert DeleteCondition().empty
    with pytest.raises(S3Error, match="InvalidArgument"):
        delete_condition(None, None, "ten")
