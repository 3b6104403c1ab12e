"""SigV4 verification agrees with botocore's own signer, byte for byte.

Requests are produced by a real boto3 client whose sending is intercepted, so the paths,
queries and headers are exactly what boto3 puts on the wire.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from store.gateways.s3 import sigv4
from store.gateways.s3.errors import S3Error

ACCESS = "AKIDEXAMPLE000000001"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
REGION = "us-east-1"
ENDPOINT = "http://127.0.0.1:9000"


@dataclass
class Sent:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: Any


class _Captured(Exception):
    def __init__(self, sent: Sent) -> None:
        self.sent = sent


def make_client(endpoint: str = ENDPOINT, **config: Any) -> Any:
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS,
        aws_secret_access_key=SECRET,
        region_name=REGION,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            **config,
        ),
    )

    def capture(request: AWSRequest, **_: Any) -> None:
        url = urlsplit(request.url)
        headers = [
            (k.lower(), v.decode() if isinstance(v, bytes) else v)
            for k, v in request.headers.items()
        ]
        if not any(k == "host" for k, _ in headers):
            headers.append(("host", url.netloc))
        raise _Captured(Sent(request.method, url.path, url.query, headers, request.body))

    client.meta.events.register("before-send.s3", capture)
    return client


def sent_by(call: Callable[[], Any]) -> Sent:
    with pytest.raises(_Captured) as caught:
        call()
    return caught.value.sent


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    yield make_client()


def check(sent: Sent, *, secret: str = SECRET, now: datetime | None = None) -> sigv4.Verified:
    signed = sigv4.parse_request(
        sent.method, sent.query, sent.headers, region=REGION, now=now or datetime.now(UTC)
    )
    assert signed is not None
    return sigv4.verify(signed, secret, sent.method, sent.path, sent.query, sent.headers)


ODD_KEYS = [
    "plain.txt",
    "with space/and more spaces",
    "ünïcødé/ключ/鍵",
    "plus+sign",
    "tilde~and-dash_and.dot",
    "//double//slash//",
    "trailing/",
    "bang!quote'paren()star*",
    "percent%20literal%",
    "equals=and&ampersand?question#hash",
    "emoji😀",
]


@pytest.mark.parametrize("key", ODD_KEYS)
def test_header_auth_of_odd_keys(client: Any, key: str) -> None:
    sent = sent_by(lambda: client.get_object(Bucket="bucket", Key=key))
    verified = check(sent)
    assert verified.access_key == ACCESS
    assert verified.scope.endswith(f"/{REGION}/s3/aws4_request")


@pytest.mark.parametrize("key", ODD_KEYS)
def test_presigned_odd_keys(client: Any, key: str) -> None:
    url = urlsplit(
        client.generate_presigned_url(
            "get_object", Params={"Bucket": "bucket", "Key": key}, ExpiresIn=60
        )
    )
    sent = Sent("GET", url.path, url.query, [("host", url.netloc)], b"")
    signed = sigv4.parse_request(
        "GET", url.query, sent.headers, region=REGION, now=datetime.now(UTC)
    )
    assert signed is not None and signed.presigned and signed.expires == 60
    sigv4.verify(signed, SECRET, "GET", url.path, url.query, sent.headers)


def test_query_parameters_are_canonicalised(client: Any) -> None:
    sent = sent_by(
        lambda: client.list_objects_v2(
            Bucket="bucket",
            Prefix="a b+c/ü~",
            Delimiter="/",
            StartAfter="x=y&z",
            MaxKeys=7,
            EncodingType="url",
        )
    )
    check(sent)


def test_put_with_signed_payload_and_metadata(client: Any) -> None:
    sent = sent_by(
        lambda: client.put_object(
            Bucket="bucket",
            Key="k",
            Body=b"hello",
            Metadata={"Color": "  blue   green ", "x": "1"},
            ContentType="text/plain",
        )
    )
    signed = sigv4.parse_request(
        sent.method, sent.query, sent.headers, region=REGION, now=datetime.now(UTC)
    )
    assert signed is not None
    assert signed.payload_hash == hashlib.sha256(b"hello").hexdigest()
    sigv4.verify(signed, SECRET, sent.method, sent.path, sent.query, sent.headers)


def test_unsigned_payload_over_https() -> None:
    https = make_client("https://127.0.0.1:9443")
    sent = sent_by(lambda: https.put_object(Bucket="bucket", Key="k", Body=b"x" * 100))
    signed = sigv4.parse_request(
        sent.method, sent.query, sent.headers, region=REGION, now=datetime.now(UTC)
    )
    assert signed is not None
    assert signed.payload_hash in (sigv4.UNSIGNED_PAYLOAD, sigv4.STREAMING_UNSIGNED_TRAILER)
    sigv4.verify(signed, SECRET, sent.method, sent.path, sent.query, sent.headers)


def test_wrong_secret_does_not_match(client: Any) -> None:
    sent = sent_by(lambda: client.head_object(Bucket="bucket", Key="k"))
    with pytest.raises(S3Error) as caught:
        check(sent, secret="not the secret")
    assert caught.value.code == "SignatureDoesNotMatch"
    assert caught.value.status == 403
    assert "AWS4-HMAC-SHA256" in caught.value.fields["StringToSign"]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: Sent("DELETE", s.path, s.query, s.headers, s.body),
        lambda s: Sent(s.method, s.path + "x", s.query, s.headers, s.body),
        lambda s: Sent(s.method, s.path, "acl=", s.headers, s.body),
        lambda s: Sent(
            s.method,
            s.path,
            s.query,
            [(k, "other.host:1" if k == "host" else v) for k, v in s.headers],
            s.body,
        ),
    ],
)
def test_tampered_requests_do_not_match(client: Any, tamper: Callable[[Sent], Sent]) -> None:
    sent = tamper(sent_by(lambda: client.get_object(Bucket="bucket", Key="k")))
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        check(sent)


def test_unsigned_amz_header_is_refused(client: Any) -> None:
    sent = sent_by(lambda: client.get_object(Bucket="bucket", Key="k"))
    sent.headers.append(("x-amz-meta-added", "later"))
    with pytest.raises(S3Error) as caught:
        check(sent)
    assert caught.value.code == "AccessDenied"
    assert caught.value.fields["HeadersNotSigned"] == "x-amz-meta-added"


def test_wrong_region_names_the_right_one(client: Any) -> None:
    sent = sent_by(lambda: client.get_object(Bucket="bucket", Key="k"))
    with pytest.raises(S3Error) as caught:
        sigv4.parse_request(
            sent.method, sent.query, sent.headers, region="eu-west-1", now=datetime.now(UTC)
        )
    assert caught.value.code == "AuthorizationHeaderMalformed"
    assert caught.value.status == 400
    assert caught.value.fields["Region"] == "eu-west-1"


def test_request_time_too_skewed(client: Any) -> None:
    sent = sent_by(lambda: client.get_object(Bucket="bucket", Key="k"))
    with pytest.raises(S3Error) as caught:
        check(sent, now=datetime.now(UTC) + timedelta(minutes=16))
    assert caught.value.code == "RequestTimeTooSkewed"
    assert caught.value.status == 403


def test_signature_version_2_is_not_for_this_module() -> None:
    headers = [("host", "h"), ("authorization", "AWS AKID:c2lnbmF0dXJl")]
    assert sigv4.parse_request("GET", "", headers, region=REGION, now=datetime.now(UTC)) is None


def test_anonymous_request_has_no_signature() -> None:
    assert (
        sigv4.parse_request("GET", "", [("host", "h")], region=REGION, now=datetime.now(UTC))
        is None
    )


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        ("AWS4-HMAC-SHA256 garbage", "AuthorizationHeaderMalformed"),
        (
            "AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/s3/aws4_request",
            "AuthorizationHeaderMalformed",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/2024/us-east-1/s3/aws4_request, SignedHeaders=host, Signature="
            + "0" * 64,
            "AuthorizationHeaderMalformed",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/sqs/aws4_request, SignedHeaders=host, Signature="
            + "0" * 64,
            "AuthorizationHeaderMalformed",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/s3/aws4_request, SignedHeaders=date, Signature="
            + "0" * 64,
            "AuthorizationHeaderMalformed",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=xyz",
            "AuthorizationHeaderMalformed",
        ),
    ],
)
def test_malformed_authorization_headers(authorization: str, code: str) -> None:
    now = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    headers = [
        ("host", "h"),
        ("authorization", authorization),
        ("x-amz-date", "20240101T120000Z"),
        ("x-amz-content-sha256", sigv4.EMPTY_SHA256),
    ]
    with pytest.raises(S3Error) as caught:
        sigv4.parse_request("GET", "", headers, region=REGION, now=now)
    assert caught.value.code == code
    assert caught.value.status == 400


def test_missing_content_sha256_header(client: Any) -> None:
    sent = sent_by(lambda: client.get_object(Bucket="bucket", Key="k"))
    headers = [(k, v) for k, v in sent.headers if k != "x-amz-content-sha256"]
    with pytest.raises(S3Error) as caught:
        sigv4.parse_request("GET", "", headers, region=REGION, now=datetime.now(UTC))
    assert caught.value.code == "InvalidRequest"


def test_bad_content_sha256_value() -> None:
    headers = [
        ("host", "h"),
        (
            "authorization",
            "AWS4-HMAC-SHA256 Credential=A/20240101/us-east-1/s3/aws4_request, "
            "SignedHeaders=host, Signature=" + "0" * 64,
        ),
        ("x-amz-date", "20240101T120000Z"),
        ("x-amz-content-sha256", "not-a-hash"),
    ]
    with pytest.raises(S3Error) as caught:
        sigv4.parse_request(
            "GET", "", headers, region=REGION, now=datetime(2024, 1, 1, 12, tzinfo=UTC)
        )
    assert caught.value.code == "InvalidArgument"
    assert caught.value.fields["ArgumentName"] == "x-amz-content-sha256"


def _presigned(client: Any, expires: int) -> tuple[str, str]:
    url = urlsplit(
        client.generate_presigned_url(
            "get_object", Params={"Bucket": "b", "Key": "k"}, ExpiresIn=expires
        )
    )
    return url.path, url.query


def test_presigned_expiry(client: Any) -> None:
    _, query = _presigned(client, 1)
    later = datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(S3Error) as caught:
        sigv4.parse_request("GET", query, [("host", "127.0.0.1:9000")], region=REGION, now=later)
    assert caught.value.code == "AccessDenied"
    assert caught.value.message == "Request has expired"
    assert caught.value.fields["X-Amz-Expires"] == "1"


def test_presigned_week_is_the_limit(client: Any) -> None:
    _, query = _presigned(client, sigv4.MAX_EXPIRES)
    assert sigv4.parse_request("GET", query, [("host", "h")], region=REGION, now=datetime.now(UTC))
    longer = query.replace(
        f"X-Amz-Expires={sigv4.MAX_EXPIRES}", f"X-Amz-Expires={sigv4.MAX_EXPIRES + 1}"
    )
    with pytest.raises(S3Error) as caught:
        sigv4.parse_request("GET", longer, [("host", "h")], region=REGION, now=datetime.now(UTC))
    assert caught.value.code == "AuthorizationQueryParametersError"
    assert caught.value.status == 403


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("X-Amz-Expires=60", "X-Amz-Expires=soon"),
        ("X-Amz-Expires=60", "X-Amz-Expires=-5"),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA1"),
        ("X-Amz-Date=", "X-Amz-Date=yesterday&X-Old-Date="),
        ("X-Amz-SignedHeaders=host", "X-Amz-Unsigned=host"),
    ],
)
def test_presigned_malformed(client: Any, old: str, new: str) -> None:
    _, query = _presigned(client, 60)
    assert old in query
    with pytest.raises(S3Error) as caught:
        sigv4.parse_request(
            "GET", query.replace(old, new), [("host", "h")], region=REGION, now=datetime.now(UTC)
        )
    assert caught.value.code == "AuthorizationQueryParametersError"
    assert caught.value.status == 403


def test_presigned_signature_checked(client: Any) -> None:
    path, query = _presigned(client, 60)
    headers = [("host", "127.0.0.1:9000")]
    signed = sigv4.parse_request("GET", query, headers, region=REGION, now=datetime.now(UTC))
    assert signed is not None
    sigv4.verify(signed, SECRET, "GET", path, query, headers)
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        sigv4.verify(signed, SECRET, "GET", path + "2", query, headers)
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        sigv4.verify(signed, SECRET, "PUT", path, query, headers)


def test_both_mechanisms_at_once_is_refused(client: Any) -> None:
    _, query = _presigned(client, 60)
    headers = [("host", "h"), ("authorization", "AWS4-HMAC-SHA256 Credential=x")]
    with pytest.raises(S3Error) as caught:
        sigv4.parse_request("GET", query, headers, region=REGION, now=datetime.now(UTC))
    assert caught.value.code == "InvalidArgument"


def test_date_header_instead_of_x_amz_date() -> None:
    creds = Credentials(ACCESS, SECRET)
    request = AWSRequest(
        method="GET",
        url="http://127.0.0.1:9000/bucket/key",
        headers={"Date": "Mon, 01 Jan 2024 12:00:00 GMT"},
    )
    S3SigV4Auth(creds, "s3", REGION).add_auth(request)
    headers = [(k.lower(), v) for k, v in request.headers.items()] + [("host", "127.0.0.1:9000")]
    date = dict(headers)["date"]
    when = parsedate_to_datetime(date).replace(tzinfo=UTC)
    signed = sigv4.parse_request("GET", "", headers, region=REGION, now=when)
    assert signed is not None
    sigv4.verify(signed, SECRET, "GET", "/bucket/key", "", headers)


def test_plus_meaning_space_in_query() -> None:
    # A client that sends a space as "+" and signed it as %20.
    creds = Credentials(ACCESS, SECRET)
    request = AWSRequest(method="GET", url="http://h/bucket", params={"prefix": "a b"})
    S3SigV4Auth(creds, "s3", REGION).add_auth(request)
    headers = [(k.lower(), v) for k, v in request.headers.items()] + [("host", "h")]
    signed = sigv4.parse_request("GET", "prefix=a+b", headers, region=REGION, now=datetime.now(UTC))
    assert signed is not None
    sigv4.verify(signed, SECRET, "GET", "/bucket", "prefix=a+b", headers)


def test_signing_key_matches_the_documented_example() -> None:
    # The worked example of the SigV4 documentation (secret, 20120215, us-east-1, iam).
    key = sigv4.signing_key(
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam"
    )
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
