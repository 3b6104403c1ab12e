"""Signature Version 2 agrees with botocore's HMAC-v1 signers (header and presigned)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from store.gateways.s3 import sigv2
from store.gateways.s3.errors import S3Error
from tests.unit.test_s3_sigv4 import ACCESS, ENDPOINT, REGION, SECRET, Sent, sent_by

KEYS = ["plain", "a b/c", "ünï/鍵", "plus+sign", "x!'()*~"]


@pytest.fixture(scope="module")
def client() -> Any:
    from tests.unit.test_s3_sigv4 import _Captured

    made = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        region_name=REGION,
        config=Config(signature_version="s3", s3={"addressing_style": "path"}),
    )

    def capture(request: Any, **_: Any) -> None:
        url = urlsplit(request.url)
        headers = [
            (k.lower(), v.decode() if isinstance(v, bytes) else v)
            for k, v in request.headers.items()
        ]
        raise _Captured(Sent(request.method, url.path, url.query, headers, request.body))

    made.meta.events.register("before-send.s3", capture)
    return made


def check(sent: Sent, secret: str = SECRET) -> None:
    signed = sigv2.parse_request(sent.query, sent.headers, now=datetime.now(UTC))
    assert signed is not None and signed.access_key == ACCESS
    sigv2.verify(signed, secret, sent.method, sent.path, sent.query, sent.headers)


@pytest.mark.parametrize("key", KEYS)
def test_header_signatures(client: Any, key: str) -> None:
    check(sent_by(lambda: client.get_object(Bucket="bucket", Key=key)))
    check(
        sent_by(
            lambda: client.put_object(
                Bucket="bucket", Key=key, Body=b"x", Metadata={"m": "v"}, ContentType="text/plain"
            )
        )
    )


def test_subresources_are_signed(client: Any) -> None:
    check(sent_by(lambda: client.get_bucket_acl(Bucket="bucket")))
    check(sent_by(lambda: client.list_parts(Bucket="bucket", Key="k", UploadId="abc")))
    check(
        sent_by(
            lambda: client.get_object(
                Bucket="bucket", Key="k", ResponseContentType="text/html", ResponseCacheControl="no"
            )
        )
    )


def test_wrong_secret(client: Any) -> None:
    with pytest.raises(S3Error) as caught:
        check(sent_by(lambda: client.get_object(Bucket="bucket", Key="k")), secret="nope")
    assert (caught.value.code, caught.value.status) == ("SignatureDoesNotMatch", 403)


@pytest.mark.parametrize("key", KEYS)
def test_presigned_urls(client: Any, key: str) -> None:
    url = urlsplit(
        client.generate_presigned_url("get_object", Params={"Bucket": "bucket", "Key": key})
    )
    signed = sigv2.parse_request(url.query, [("host", url.netloc)], now=datetime.now(UTC))
    assert signed is not None and signed.presigned
    sigv2.verify(signed, SECRET, "GET", url.path, url.query, [("host", url.netloc)])
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        sigv2.verify(signed, SECRET, "DELETE", url.path, url.query, [])


def test_expired_presigned_url(client: Any) -> None:
    url = urlsplit(
        client.generate_presigned_url(
            "get_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=1
        )
    )
    with pytest.raises(S3Error) as caught:
        sigv2.parse_request(url.query, [], now=datetime.now(UTC) + timedelta(seconds=5))
    assert (caught.value.code, caught.value.message) == ("AccessDenied", "Request has expired")


def test_header_request_too_skewed(client: Any) -> None:
    sent = sent_by(lambda: client.get_object(Bucket="bucket", Key="k"))
    with pytest.raises(S3Error) as caught:
        sigv2.parse_request(sent.query, sent.headers, now=datetime.now(UTC) + timedelta(hours=1))
    assert caught.value.code == "RequestTimeTooSkewed"


def test_not_v2() -> None:
    assert (
        sigv2.parse_request("", [("authorization", "AWS4-HMAC-SHA256 x")], now=datetime.now(UTC))
        is None
    )
    assert sigv2.parse_request("prefix=a", [], now=datetime.now(UTC)) is None
    with pytest.raises(S3Error):
        sigv2.parse_request(
            "", [("authorization", "AWS nocolon"), ("date", "x")], now=datetime.now(UTC)
        )
