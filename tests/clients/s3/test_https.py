"""boto3 over HTTPS: aws-chunked bodies with checksum trailers, Expect: 100-continue."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import Gateway, User, empty_and_delete, s3_client

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def secure(https_gateway: Gateway, user: User, tls_files: tuple[Path, Path, Path]) -> Any:
    return s3_client(https_gateway.url, user, verify=str(tls_files[2]))


@pytest.fixture
def secure_bucket(secure: Any) -> Iterator[str]:
    name = f"tls-{uuid.uuid4().hex[:12]}"
    secure.create_bucket(Bucket=name)
    yield name
    empty_and_delete(secure, name)


def record_requests(client: Any) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []

    def remember(request: Any, **_: Any) -> None:
        seen.append(
            {
                k.lower(): v.decode() if isinstance(v, bytes) else v
                for k, v in request.headers.items()
            }
        )

    client.meta.events.register("before-send.s3", remember)
    return seen


def test_streaming_upload_uses_aws_chunked_with_a_crc32_trailer(
    secure: Any, secure_bucket: str
) -> None:
    seen = record_requests(secure)
    data = os.urandom(3 * MIB + 5)
    put = secure.put_object(Bucket=secure_bucket, Key="stream", Body=io.BytesIO(data))
    sent = seen[-1]
    assert sent["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert "aws-chunked" in sent["content-encoding"]
    assert sent["x-amz-trailer"] == "x-amz-checksum-crc32"
    assert put["ChecksumCRC32"]
    got = secure.get_object(Bucket=secure_bucket, Key="stream", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    assert got["ChecksumCRC32"] == put["ChecksumCRC32"]
    assert got.get("ContentEncoding") is None  # aws-chunked is framing, not a coding


def test_sha256_trailer_and_multipart(secure: Any, secure_bucket: str) -> None:
    data = os.urandom(12 * MIB)
    secure.upload_fileobj(
        io.BytesIO(data), secure_bucket, "mp", ExtraArgs={"ChecksumAlgorithm": "SHA256"}
    )
    assert secure.get_object(Bucket=secure_bucket, Key="mp")["Body"].read() == data
    put = secure.put_object(
        Bucket=secure_bucket, Key="sha", Body=io.BytesIO(b"abc"), ChecksumAlgorithm="SHA256"
    )
    assert put["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(b"abc").digest()).decode()


def test_expect_100_continue(secure: Any, secure_bucket: str) -> None:
    seen = record_requests(secure)
    data = os.urandom(2 * MIB)
    secure.put_object(Bucket=secure_bucket, Key="continue", Body=data)
    assert seen[-1].get("expect") == "100-continue"
    assert secure.get_object(Bucket=secure_bucket, Key="continue")["Body"].read() == data


def test_refused_upload_never_sends_its_body(
    https_gateway: Gateway, tls_files: tuple[Path, Path, Path], secure_bucket: str
) -> None:
    # A request refused before its body is read gets its answer without 100 Continue:
    # the client never uploads the bytes.
    stranger = User(
        "nobody", {"id": "0", "access_key": "SKNOSUCHKEY000000000", "secret_key": "s" * 40}
    )
    client = s3_client(https_gateway.url, stranger, verify=str(tls_files[2]))
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=secure_bucket, Key="refused", Body=os.urandom(8 * MIB))
    assert caught.value.response["Error"]["Code"] == "InvalidAccessKeyId"
