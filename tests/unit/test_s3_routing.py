"""Addressing, names and sub-resources: which operation a request is."""

from __future__ import annotations

import pytest

from store.gateways.s3.errors import S3Error
from store.gateways.s3.routing import route, valid_bucket_name

DOMAINS = ("s3.example.test",)


@pytest.mark.parametrize(
    ("method", "target", "operation"),
    [
        ("GET", "/", "ListBuckets"),
        ("PUT", "/bucket", "CreateBucket"),
        ("HEAD", "/bucket", "HeadBucket"),
        ("DELETE", "/bucket/", "DeleteBucket"),
        ("GET", "/bucket", "ListObjects"),
        ("GET", "/bucket?list-type=2&prefix=a", "ListObjectsV2"),
        ("GET", "/bucket?versions", "ListObjectVersions"),
        ("GET", "/bucket?location", "GetBucketLocation"),
        ("GET", "/bucket?uploads", "ListMultipartUploads"),
        ("GET", "/bucket?acl", "GetBucketAcl"),
        ("GET", "/bucket?versioning", "GetBucketVersioning"),
        ("PUT", "/bucket?object-lock", "PutObjectLockConfiguration"),
        ("PUT", "/bucket/key?retention", "PutObjectRetention"),
        ("GET", "/bucket/key?legal-hold", "GetObjectLegalHold"),
        ("GET", "/bucket?cors", "GetBucketCors"),
        ("DELETE", "/bucket?cors", "DeleteBucketCors"),
        ("POST", "/bucket?delete", "DeleteObjects"),
        ("POST", "/bucket", "PostObject"),
        ("PUT", "/bucket?cors", "PutBucketCors"),
        ("OPTIONS", "/bucket/key", "PreflightRequest"),
        ("OPTIONS", "/bucket", "PreflightRequest"),
        ("PUT", "/bucket/key", "PutObject"),
        ("GET", "/bucket/key?x-id=GetObject", "GetObject"),
        ("HEAD", "/bucket/key", "HeadObject"),
        ("DELETE", "/bucket/key", "DeleteObject"),
        ("POST", "/bucket/key?uploads", "CreateMultipartUpload"),
        ("PUT", "/bucket/key?partNumber=1&uploadId=x", "UploadPart"),
        ("POST", "/bucket/key?uploadId=x", "CompleteMultipartUpload"),
        ("DELETE", "/bucket/key?uploadId=x", "AbortMultipartUpload"),
        ("GET", "/bucket/key?uploadId=x", "ListParts"),
        ("GET", "/bucket/key?acl", "GetObjectAcl"),
        ("GET", "/bucket/key?attributes", "GetObjectAttributes"),
        ("PUT", "/bucket/key?tagging", "PutObjectTagging"),
        ("PUT", "/bucket?versioning", "PutBucketVersioning"),
        ("GET", "/bucket?versioning", "GetBucketVersioning"),
        ("PUT", "/bucket?object-lock", "PutObjectLockConfiguration"),
        ("PUT", "/bucket/key?retention", "PutObjectRetention"),
        ("GET", "/bucket/key?legal-hold", "GetObjectLegalHold"),
        ("PUT", "/bucket?policy", "PutBucketPolicy"),
        ("GET", "/bucket?policy", "GetBucketPolicy"),
        ("DELETE", "/bucket?policy", "DeleteBucketPolicy"),
        ("GET", "/bucket?policyStatus", "GetBucketPolicyStatus"),
    ],
)
def test_path_style_operations(method: str, target: str, operation: str) -> None:
    path, _, query = target.partition("?")
    assert route(method, path, query, "127.0.0.1:9000").operation == operation


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/bucket?lifecycle"),
        ("PUT", "/bucket?replication"),
        ("PUT", "/bucket?website"),
        ("GET", "/bucket/key?torrent"),
        ("POST", "/bucket/key?restore"),
        ("POST", "/bucket/key?select&select-type=2"),
        ("PUT", "/bucket/key?renameObject"),
        ("GET", "/bucket?acl&policy"),
    ],
)
def test_unimplemented_subresources_are_never_another_operation(method: str, target: str) -> None:
    path, _, query = target.partition("?")
    assert route(method, path, query, None).operation == "NotImplemented"


def test_unknown_methods() -> None:
    assert route("PATCH", "/bucket/key", "", None).operation == "MethodNotAllowed"
    assert route("PUT", "/", "", None).operation == "MethodNotAllowed"


def test_keys_are_percent_decoded_once() -> None:
    r = route("GET", "/bucket/a%20b/%E2%82%AC%2Bplus+sign//x%2Fy", "", None)
    assert (r.bucket, r.key) == ("bucket", "a b/€+plus+sign//x/y")
    assert r.resource == "/bucket/a b/€+plus+sign//x/y"


def test_virtual_host_style() -> None:
    r = route("GET", "/photos/2024/a.jpg", "", "media.s3.example.test:7480", DOMAINS)
    assert (r.bucket, r.key, r.virtual_host) == ("media", "photos/2024/a.jpg", True)
    assert route("GET", "/", "", "media.s3.example.test", DOMAINS).operation == "ListObjects"
    # The bare domain and other hosts are path-style.
    r = route("GET", "/media/k", "", "s3.example.test", DOMAINS)
    assert (r.bucket, r.key, r.virtual_host) == ("media", "k", False)
    r = route("GET", "/media/k", "", "127.0.0.1:7480", DOMAINS)
    assert (r.bucket, r.key) == ("media", "k")


def test_query_arguments_are_decoded() -> None:
    r = route("GET", "/bucket", "list-type=2&prefix=a%2Fb%20c&delimiter=%2F&start-after=", None)
    assert r.params == {"list-type": "2", "prefix": "a/b c", "delimiter": "/", "start-after": ""}


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/bucket/%ff%fe", "InvalidURI"),
        ("/bucket/" + "k" * 1025, "KeyTooLongError"),
        ("/bucket/a%00b", "InvalidURI"),
        ("bucket/key", "InvalidURI"),
    ],
)
def test_bad_keys(path: str, code: str) -> None:
    with pytest.raises(S3Error) as caught:
        route("GET", path, "", None)
    assert caught.value.code == code


def test_a_key_of_1024_bytes_is_fine() -> None:
    key = "é" * 512
    assert route("GET", "/bucket/" + key, "", None).key == key


@pytest.mark.parametrize(
    "name",
    ["abc", "my-bucket", "my.bucket.name", "a" * 63, "0bucket9", "b-1.c-2"],
)
def test_valid_bucket_names(name: str) -> None:
    assert valid_bucket_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "ab",
        "a" * 64,
        "Bucket",
        "under_score",
        "-start",
        "end-",
        "two..dots",
        "dash.-dot",
        "192.168.5.4",
        "xn--punycode",
        "name-s3alias",
        "sp ace",
    ],
)
def test_invalid_bucket_names(name: str) -> None:
    assert not valid_bucket_name(name)
