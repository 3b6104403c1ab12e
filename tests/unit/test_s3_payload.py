"""Request payloads: decoded, measured and verified before anything may be published."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import AsyncIterator

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from store.gateways.s3 import sigv4
from store.gateways.s3.errors import S3Error
from store.gateways.s3.payload import Payload
from store.gateways.web.server import ClientDisconnected


async def source(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def failing_source() -> AsyncIterator[bytes]:
    yield b"some"
    raise ClientDisconnected("gone")


async def drain(payload: Payload) -> bytes:
    return b"".join([piece async for piece in payload])


async def test_plain_signed_body() -> None:
    body = b"hello world"
    payload = Payload(
        source(body[:4], body[4:]),
        [],
        payload_hash=hashlib.sha256(body).hexdigest(),
        signing=None,
        wire_length=len(body),
        chunked_transfer=False,
    )
    assert await drain(payload) == body
    etag, checksum = payload.finish()
    assert etag == hashlib.md5(body).hexdigest() and checksum is None


async def test_body_not_matching_its_signed_hash() -> None:
    payload = Payload(
        source(b"tampered"),
        [],
        payload_hash=hashlib.sha256(b"original").hexdigest(),
        signing=None,
        wire_length=8,
        chunked_transfer=False,
    )
    await drain(payload)
    with pytest.raises(S3Error) as caught:
        payload.finish()
    assert caught.value.code == "XAmzContentSHA256Mismatch"


async def test_short_body_is_incomplete() -> None:
    payload = Payload(
        source(b"abc"),
        [],
        payload_hash=sigv4.UNSIGNED_PAYLOAD,
        signing=None,
        wire_length=10,
        chunked_transfer=False,
    )
    await drain(payload)
    with pytest.raises(S3Error, match="IncompleteBody"):
        payload.finish()


async def test_aws_chunked_with_trailer_from_botocore() -> None:
    data = bytes(range(200)) * 50
    encoded = AwsChunkedWrapper(
        io.BytesIO(data),
        checksum_cls=Crc32Checksum,
        checksum_name="x-amz-checksum-crc32",
        chunk_size=1000,
    ).read()
    headers = [
        ("x-amz-decoded-content-length", str(len(data))),
        ("x-amz-trailer", "x-amz-checksum-crc32"),
        ("x-amz-sdk-checksum-algorithm", "CRC32"),
        ("content-encoding", "aws-chunked"),
    ]
    payload = Payload(
        source(encoded[:777], encoded[777:]),
        headers,
        payload_hash=sigv4.STREAMING_UNSIGNED_TRAILER,
        signing=None,
        wire_length=None,
        chunked_transfer=True,
    )
    assert payload.length == len(data)
    assert await drain(payload) == data
    etag, checksum = payload.finish()
    assert etag == hashlib.md5(data).hexdigest()
    assert checksum is not None and checksum[0] == "crc32"


async def test_aws_chunked_needs_the_decoded_length() -> None:
    with pytest.raises(S3Error) as caught:
        Payload(
            source(),
            [],
            payload_hash=sigv4.STREAMING_UNSIGNED_TRAILER,
            signing=None,
            wire_length=None,
            chunked_transfer=True,
        )
    assert caught.value.code == "MissingContentLength"


async def test_content_md5_of_a_streamed_body() -> None:
    body = b"x" * 100_000
    md5 = base64.b64encode(hashlib.md5(b"y" * 100_000).digest()).decode()
    payload = Payload(
        source(body),
        [("content-md5", md5)],
        payload_hash=sigv4.UNSIGNED_PAYLOAD,
        signing=None,
        wire_length=len(body),
        chunked_transfer=False,
    )
    await drain(payload)
    with pytest.raises(S3Error, match="BadDigest"):
        payload.finish()


async def test_client_disconnect_passes_through() -> None:
    payload = Payload(
        failing_source(),
        [],
        payload_hash=None,
        signing=None,
        wire_length=100,
        chunked_transfer=False,
    )
    with pytest.raises(ClientDisconnected):
        await drain(payload)


async def test_read_all_limit() -> None:
    payload = Payload(
        source(b"a" * 100),
        [],
        payload_hash=None,
        signing=None,
        wire_length=100,
        chunked_transfer=False,
    )
    with pytest.raises(S3Error) as caught:
        await payload.read_all(10)
    assert caught.value.status == 400
