"""POST Object: uploads from HTML forms, signed by a policy (boto3's generate_presigned_post
for SigV4, a hand-made SigV2 form), and the policy's refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import Gateway, User, error_of, raw_request


def form_body(
    fields: list[tuple[str, str]], content: bytes, filename: str = "up.bin"
) -> tuple[bytes, str]:
    """A multipart/form-data body: the fields, then the file, then a field S3 ignores."""
    boundary = "----form" + os.urandom(8).hex()
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    out += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    out += content + b"\r\n"
    out += f'--{boundary}\r\nContent-Disposition: form-data; name="after"\r\n\r\nx\r\n'.encode()
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def post(
    gateway: Gateway, bucket: str, fields: list[tuple[str, str]], content: bytes, **kw: Any
) -> tuple[int, dict[str, str], bytes]:
    body, content_type = form_body(fields, content, **kw)
    return raw_request(gateway, "POST", f"/{bucket}", {"Content-Type": content_type}, body)


def code_of(body: bytes) -> str:
    found = re.search(rb"<Code>([^<]*)</Code>", body)
    return found.group(1).decode() if found else ""


def presigned(s3: Any, bucket: str, key: str, **kw: Any) -> list[tuple[str, str]]:
    made = s3.generate_presigned_post(bucket, key, **kw)
    return list(made["fields"].items())


def test_presigned_post_uploads_with_fields(s3: Any, bucket: str, gateway: Gateway) -> None:
    content = os.urandom(300_000)
    fields = presigned(
        s3,
        bucket,
        "uploads/${filename}",
        Fields={"Content-Type": "image/png", "x-amz-meta-who": "form", "acl": "private"},
        Conditions=[
            ["starts-with", "$key", "uploads/"],
            {"Content-Type": "image/png"},
            {"x-amz-meta-who": "form"},
            {"acl": "private"},
            ["content-length-range", 1, 1_000_000],
        ],
    )
    status, headers, _ = post(gateway, bucket, fields, content, filename="pic.png")
    assert status == 204
    assert headers["etag"] == f'"{hashlib.md5(content).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="uploads/pic.png")
    assert got["Body"].read() == content
    assert (got["ContentType"], got["Metadata"]) == ("image/png", {"who": "form"})


def test_success_status_201_answers_a_post_response(s3: Any, bucket: str, gateway: Gateway) -> None:
    fields = presigned(
        s3,
        bucket,
        "k201",
        Fields={"success_action_status": "201"},
        Conditions=[{"success_action_status": "201"}],
    )
    status, _, body = post(gateway, bucket, fields, b"hello")
    assert status == 201
    doc = ET.fromstring(body)
    assert (doc.findtext("Bucket"), doc.findtext("Key")) == (bucket, "k201")
    assert doc.findtext("ETag") == f'"{hashlib.md5(b"hello").hexdigest()}"'


def test_sigv2_form(bucket: str, gateway: Gateway, user: User, s3: Any) -> None:
    expires = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = {"expiration": expires, "conditions": [{"bucket": bucket}, {"key": "v2"}]}
    policy = base64.b64encode(json.dumps(document).encode()).decode()
    signature = base64.b64encode(
        hmac.new(user.secret_key.encode(), policy.encode(), hashlib.sha1).digest()
    ).decode()
    fields = [
        ("key", "v2"),
        ("AWSAccessKeyId", user.access_key),
        ("policy", policy),
        ("signature", signature),
        ("x-ignore-note", "not in the policy"),
    ]
    assert post(gateway, bucket, fields, b"two")[0] == 204
    assert s3.get_object(Bucket=bucket, Key="v2")["Body"].read() == b"two"


def no_object(s3: Any, bucket: str, key: str) -> bool:
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key=key)
    return error_of(caught.value)[0] == 404


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ("extra_field", 403, "AccessDenied"),
        ("too_large", 400, "EntityTooLarge"),
        ("too_small", 400, "EntityTooSmall"),
        ("condition", 403, "AccessDenied"),
        ("signature", 403, "SignatureDoesNotMatch"),
        ("unknown_key", 403, "InvalidAccessKeyId"),
        ("no_key_field", 400, "InvalidArgument"),
        ("anonymous", 403, "AccessDenied"),
        ("expired", 403, "AccessDenied"),
    ],
)
def test_refusals_store_nothing(
    s3: Any, bucket: str, gateway: Gateway, change: str, status: int, code: str
) -> None:
    key = f"refused-{change}"
    fields = presigned(
        s3,
        bucket,
        key,
        Conditions=[["content-length-range", 10, 1000]],
        ExpiresIn=1 if change == "expired" else 300,
    )
    content = b"x" * 100
    if change == "extra_field":
        fields.append(("Content-Type", "text/plain"))
    elif change == "too_large":
        content = b"x" * 5000
    elif change == "too_small":
        content = b"x"
    elif change == "condition":
        fields = [(n, "other" if n == "key" else v) for n, v in fields]
    elif change == "signature":
        fields = [(n, "0" * 64 if n == "x-amz-signature" else v) for n, v in fields]
    elif change == "unknown_key":
        fields = [
            (n, "NOSUCHKEY" + v[v.index("/") :] if n == "x-amz-credential" else v)
            for n, v in fields
        ]
    elif change == "no_key_field":
        fields = [(n, v) for n, v in fields if n != "key"]
    elif change == "anonymous":
        fields = [("key", key)]
    elif change == "expired":
        time.sleep(2)
    got, _, body = post(gateway, bucket, fields, content)
    assert (got, code_of(body)) == (status, code)
    for sent in {key, *(v for name, v in fields if name == "key")}:  # the changed one too
        assert no_object(s3, bucket, sent)


def test_not_a_form_is_refused(bucket: str, gateway: Gateway) -> None:
    got, _, body = raw_request(gateway, "POST", f"/{bucket}", {"Content-Type": "text/plain"}, b"x")
    assert (got, code_of(body)) == (400, "MalformedPOSTRequest")
