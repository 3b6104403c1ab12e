"""Body digests: known check values, header parsing, and every kind of mismatch."""

from __future__ import annotations

import base64
import hashlib

import pytest

from store.gateways.s3 import checksums
from store.gateways.s3.checksums import BodyDigests, expected_from_headers
from store.gateways.s3.errors import S3Error

CHECK = b"123456789"  # the catalogue's check input


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("crc32", 0xCBF43926),
        ("crc32c", 0xE3069283),
        ("crc64nvme", 0xAE8B14860A799888),
    ],
)
def test_crc_check_values(name: str, value: int) -> None:
    hasher = checksums.new_hasher(name)
    hasher.update(CHECK[:4])
    hasher.update(CHECK[4:])
    assert int.from_bytes(hasher.digest(), "big") == value


def test_sha_checksums_are_base64_digests() -> None:
    assert (
        checksums.digest_b64("sha256", CHECK)
        == base64.b64encode(hashlib.sha256(CHECK).digest()).decode()
    )
    assert (
        checksums.digest_b64("sha1", CHECK)
        == base64.b64encode(hashlib.sha1(CHECK).digest()).decode()
    )


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_content_md5_verified() -> None:
    digests = BodyDigests(expected_from_headers([("content-md5", md5_b64(b"body"))]))
    digests.update(b"bo")
    digests.update(b"dy")
    etag, checksum = digests.finish()
    assert etag == hashlib.md5(b"body").hexdigest()
    assert checksum is None


def test_content_md5_mismatch_is_bad_digest() -> None:
    digests = BodyDigests(expected_from_headers([("content-md5", md5_b64(b"other"))]))
    digests.update(b"body")
    with pytest.raises(S3Error) as caught:
        digests.finish()
    assert (caught.value.code, caught.value.status) == ("BadDigest", 400)


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode(), ""])
def test_malformed_content_md5_is_invalid_digest(value: str) -> None:
    with pytest.raises(S3Error) as caught:
        expected_from_headers([("content-md5", value)])
    assert (caught.value.code, caught.value.status) == ("InvalidDigest", 400)


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "sha1", "sha256", "crc64nvme"])
def test_checksum_header_verified_and_returned(algorithm: str) -> None:
    value = checksums.digest_b64(algorithm, b"hello")
    digests = BodyDigests(expected_from_headers([(f"x-amz-checksum-{algorithm}", value)]))
    digests.update(b"hello")
    _, checksum = digests.finish()
    assert checksum == (algorithm, value)


@pytest.mark.parametrize(
    "headers", [[("x-amz-checksum-crc32", "AAAA")], [("x-amz-checksum-sha256", "@@@@")]]
)
def test_a_value_that_is_no_digest_cannot_match(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(S3Error) as caught:
        expected_from_headers(headers)
    assert (caught.value.code, caught.value.status) == ("BadDigest", 400)


def test_checksum_mismatch_names_the_algorithm() -> None:
    value = checksums.digest_b64("crc32", b"hello")
    digests = BodyDigests(expected_from_headers([("x-amz-checksum-crc32", value)]))
    digests.update(b"hellO")
    with pytest.raises(S3Error) as caught:
        digests.finish()
    assert caught.value.code == "BadDigest"
    assert "CRC32" in caught.value.message


@pytest.mark.parametrize(
    "headers",
    [
        [("x-amz-checksum-md4", "AAAAAA==")],
        [("x-amz-checksum-crc32", "AAAAAA=="), ("x-amz-checksum-sha1", "A" * 27 + "=")],
        [("x-amz-sdk-checksum-algorithm", "MD4")],
        [("x-amz-sdk-checksum-algorithm", "SHA1"), ("x-amz-checksum-crc32", "AAAAAA==")],
        [("x-amz-trailer", "x-amz-meta-thing")],
    ],
)
def test_malformed_checksum_headers(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(S3Error) as caught:
        expected_from_headers(headers)
    assert caught.value.status == 400


def test_trailer_checksum() -> None:
    expected = expected_from_headers(
        [("x-amz-trailer", "x-amz-checksum-crc32"), ("x-amz-sdk-checksum-algorithm", "CRC32")]
    )
    assert expected.in_trailer and expected.algorithm == "crc32"
    good = checksums.digest_b64("crc32", b"data")
    digests = BodyDigests(expected)
    digests.update(b"data")
    assert digests.finish({"x-amz-checksum-crc32": good})[1] == ("crc32", good)
    digests = BodyDigests(expected)
    digests.update(b"data")
    with pytest.raises(S3Error, match="BadDigest"):
        digests.finish({"x-amz-checksum-crc32": checksums.digest_b64("crc32", b"date")})
    digests = BodyDigests(expected)
    with pytest.raises(S3Error, match="InvalidRequest"):
        digests.finish({})


def test_sdk_algorithm_alone_computes_the_checksum() -> None:
    digests = BodyDigests(expected_from_headers([("x-amz-sdk-checksum-algorithm", "SHA256")]))
    digests.update(b"abc")
    assert digests.finish()[1] == ("sha256", checksums.digest_b64("sha256", b"abc"))


def test_signed_payload_hash_checked() -> None:
    digests = BodyDigests(
        expected_from_headers([]), payload_sha256=hashlib.sha256(b"right").hexdigest()
    )
    digests.update(b"wrong")
    with pytest.raises(S3Error) as caught:
        digests.finish()
    assert caught.value.code == "XAmzContentSHA256Mismatch"


@pytest.mark.parametrize("algorithm", ["crc32", "crc32c", "crc64nvme"])
@pytest.mark.parametrize(
    ("first", "second"), [(b"", b"abc"), (b"hello ", b"world"), (bytes(300), b"\xff" * 1000)]
)
def test_crc_combine(algorithm: str, first: bytes, second: bytes) -> None:
    def digest(data: bytes) -> bytes:
        hasher = checksums.new_hasher(algorithm)
        hasher.update(data)
        return hasher.digest()

    combined = checksums.crc_combine(algorithm, digest(first), digest(second), len(second))
    assert combined == digest(first + second)


@pytest.mark.parametrize("algorithm", ["sha512", "md5", "xxhash64", "xxhash3", "xxhash128"])
def test_newer_algorithms_are_accepted(algorithm: str) -> None:
    value = checksums.digest_b64(algorithm, b"payload")
    digests = BodyDigests(expected_from_headers([(f"x-amz-checksum-{algorithm}", value)]))
    digests.update(b"payload")
    assert digests.finish()[1] == (algorithm, value)
