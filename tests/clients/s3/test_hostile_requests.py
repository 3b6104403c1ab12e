"""Malformed and hostile requests get S3 errors, and the gateway keeps serving."""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.clients.s3.conftest import REGION, Gateway, User, raw_request


def signed(
    gateway: Gateway,
    user: User,
    method: str,
    target: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    payload_hash: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Send a request signed by botocore's SigV4 signer, with any body we like."""
    request = AWSRequest(
        method=method,
        url=f"http://127.0.0.1:{gateway.port}{target}",
        data=body,
        headers=headers or {},
    )
    if payload_hash is not None:
        request.headers["X-Amz-Content-SHA256"] = payload_hash
    else:
        request.headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    # S3SigV4Auth would replace the declared payload hash with the body's own.
    signer = S3SigV4Auth if payload_hash is None else SigV4Auth
    signer(Credentials(user.access_key, user.secret_key), "s3", REGION).add_auth(request)
    sent = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
    return raw_request(gateway, method, target, sent, body)


def code_of(body: bytes) -> str | None:
    return ET.fromstring(body).findtext("Code")


def test_garbage_authorization(gateway: Gateway) -> None:
    for value in (
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 Credential=,,,",
        "Bearer x",
        "AWS :",
        "\x7f" * 100,
    ):
        status, _, body = raw_request(gateway, "GET", "/", {"Authorization": value})
        assert 400 <= status < 500, value
        assert code_of(body)


def test_bad_xml_bodies(gateway: Gateway, user: User, s3: Any, bucket: str) -> None:
    status, _, body = signed(
        gateway, user, "PUT", "/another-bucket-x1", b"<CreateBucketConfiguration>"
    )
    assert (status, code_of(body)) == (400, "MalformedXML")
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><Delete><Object><Key>&b;</Key></Object></Delete>'
    )
    md5 = base64.b64encode(hashlib.md5(bomb).digest()).decode()
    status, _, body = signed(gateway, user, "POST", f"/{bucket}?delete", bomb, {"Content-MD5": md5})
    assert (status, code_of(body)) == (400, "MalformedXML")
    many = b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>"
    md5 = base64.b64encode(hashlib.md5(many).digest()).decode()
    status, _, body = signed(gateway, user, "POST", f"/{bucket}?delete", many, {"Content-MD5": md5})
    assert (status, code_of(body)) == (400, "MalformedXML")


def test_broken_aws_chunked_body(gateway: Gateway, user: User, bucket: str, s3: Any) -> None:
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": "5",
    }
    status, _, body = signed(
        gateway,
        user,
        "PUT",
        f"/{bucket}/chunked",
        b"zz\r\nhello\r\n0\r\n\r\n",
        headers,
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    assert status == 400 and code_of(body) in ("InvalidRequest", "IncompleteBody")
    # Signed chunks without signatures.
    status, _, body = signed(
        gateway,
        user,
        "PUT",
        f"/{bucket}/chunked",
        b"5\r\nhello\r\n0\r\n\r\n",
        headers,
        payload_hash="STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    )
    assert status == 400
    with pytest.raises(Exception):  # noqa: B017 - any error: the object must not exist
        s3.head_object(Bucket=bucket, Key="chunked")


def test_unimplemented_is_never_a_success(gateway: Gateway, user: User, bucket: str) -> None:
    for method, target in (
        ("PUT", f"/{bucket}?lifecycle"),
        ("PUT", f"/{bucket}?website"),
        ("PUT", f"/{bucket}?replication"),
        ("GET", f"/{bucket}/k?torrent"),
        ("POST", f"/{bucket}/k?select&select-type=2"),
    ):
        status, headers, body = signed(gateway, user, method, target, b"<x/>")
        assert (status, code_of(body)) == (501, "NotImplemented"), target
        assert headers["x-amz-request-id"] == ET.fromstring(body).findtext("RequestId")


def test_the_gateway_still_serves(gateway: Gateway, s3: Any) -> None:
    assert gateway.healthy()
    assert "Buckets" in s3.list_buckets()
