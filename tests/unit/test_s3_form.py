"""The multipart/form-data reader of POST Object, fed in pieces of every size, and the
POST policy: its document, conditions and signatures."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from store.gateways.s3 import form, post_policy, sigv4
from store.gateways.s3.errors import S3Error

BOUNDARY = b"xYzZY"


def body(fields: list[tuple[str, bytes]], content: bytes) -> bytes:
    out = b"preamble\r\n"
    for name, value in fields:
        out += b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="' + name.encode()
        out += b'"\r\n\r\n' + value + b"\r\n"
    out += b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="a b.txt"'
    out += b"\r\nContent-Type: text/plain\r\n\r\n" + content + b"\r\n--" + BOUNDARY + b"--\r\n"
    return out


async def pieces(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    at = 0
    for size in sizes:
        if at >= len(data):
            break
        yield data[at : at + size]
        at += size
    if at < len(data):
        yield data[at:]


async def read(data: bytes, sizes: list[int]) -> tuple[list[tuple[str, str]], form.FilePart, bytes]:
    reader = form.FormReader(pieces(data, sizes), BOUNDARY)
    fields, part = await reader.fields()
    content = b"".join([chunk async for chunk in reader.file_data()])
    return fields, part, content


# File content that looks like the delimiter, in part, at its edges.
TRICKY = b"\r\n--xYzZ" + b"\r\n-" + bytes(range(256)) + b"\r\n--xYzZX--" + b"\r"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, 100_000])
async def test_fields_and_file_in_pieces_of_any_size(step: int) -> None:
    data = body([("key", b"k\xc3\xa9"), ("Policy", b"abc"), ("empty", b"")], TRICKY)
    fields, part, content = await read(data, [step] * len(data))
    assert fields == [("key", "k\u00e9"), ("Policy", "abc"), ("empty", "")]
    assert (part.filename, part.content_type) == ("a b.txt", "text/plain")
    assert content == TRICKY


async def test_random_splits() -> None:
    rng = random.Random(5)
    content = rng.randbytes(200_000)
    data = body([("a", b"1")], content)
    for _ in range(20):
        sizes = [rng.randint(1, 5000) for _ in range(len(data))]
        assert (await read(data, sizes))[2] == content


async def test_no_file_and_truncated_bodies_are_errors() -> None:
    no_file = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n'
    no_file += b"--" + BOUNDARY + b"--\r\n"
    with pytest.raises(S3Error) as caught:
        await read(no_file, [10])
    assert caught.value.code == "InvalidArgument"
    cut = body([("a", b"1")], b"data")[:-20]
    with pytest.raises(S3Error) as caught:
        await read(cut, [7])
    assert caught.value.code == "MalformedPOSTRequest"


async def test_fields_over_the_budget_are_refused() -> None:
    data = body([("big", b"x" * (form.MAX_FIELDS_BYTES + 1))], b"")
    with pytest.raises(S3Error) as caught:
        await read(data, [4096])
    assert caught.value.code == "MaxPostPreDataLengthExceeded"


def test_boundary_of() -> None:
    assert form.boundary_of('multipart/form-data; boundary="a;b"') == b"a;b"
    for bad in (None, "text/plain", "multipart/form-data"):
        with pytest.raises(S3Error):
            form.boundary_of(bad)


def encoded(document: object) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


def test_policy_conditions() -> None:
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    policy = post_policy.parse_policy(
        encoded(
            {
                "expiration": later,
                "conditions": [
                    {"Bucket": "b"},
                    ["Starts-With", "$Key", "up/"],
                    ["eq", "$acl", "private"],
                    ["content-length-range", 0, "10"],
                ],
            }
        )
    )
    assert policy.length_range == (0, 10)
    now = datetime.now(UTC)
    fields = {"bucket": "b", "key": "up/x", "acl": "private", "policy": "p", "x-ignore-a": "1"}
    policy.check(fields, now)
    for changed in ({"key": "down/x"}, {"acl": "public-read"}, {"other": "1"}):
        with pytest.raises(S3Error) as caught:
            policy.check({**fields, **changed}, now)
        assert caught.value.code == "AccessDenied"
    with pytest.raises(S3Error, match="expired"):
        policy.check(fields, now + timedelta(hours=2))


@pytest.mark.parametrize(
    "document",
    [
        {"conditions": []},
        {"expiration": "2030-01-01", "conditions": []},
        {"expiration": "2030-01-01T00:00:00Z"},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [{}]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [["content-length-range", 5]]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [["between", "$a", "b"]]},
        {"expiration": "2030-01-01T00:00:00Z", "conditions": [["eq", "a", "b"]]},
    ],
)
def test_malformed_policies(document: object) -> None:
    with pytest.raises(S3Error) as caught:
        post_policy.parse_policy(encoded(document))
    assert (caught.value.code, caught.value.status) == ("InvalidPolicyDocument", 400)


def test_signatures() -> None:
    policy = encoded({"expiration": "2030-01-01T00:00:00Z", "conditions": []})
    key = sigv4.signing_key("secret", "20300101", "us-east-1")
    v4 = {
        "x-amz-algorithm": "AWS4-HMAC-SHA256",
        "x-amz-credential": "AK/20300101/us-east-1/s3/aws4_request",
        "x-amz-signature": sigv4.sign(key, policy),
    }
    signed = post_policy.signature_of(v4, "us-east-1")
    assert signed.access_key == "AK"
    for region in ("eu-west-1", "us-east-1/x"):
        with pytest.raises(S3Error) as caught:
            post_policy.signature_of(v4, region)
        assert (caught.value.code, caught.value.status) == ("InvalidArgument", 400)
    post_policy.verify(signed, "secret", policy)
    with pytest.raises(S3Error) as caught:
        post_policy.verify(signed, "other", policy)
    assert caught.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as caught:
        post_policy.signature_of({"policy": policy}, "us-east-1")
    assert (caught.value.code, caught.value.status) == ("InvalidArgument", 400)
