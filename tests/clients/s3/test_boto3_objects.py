"""Object operations through boto3: data, metadata, ranges, conditions, copies, deletes,
presigned URLs, and their errors."""

from __future__ import annotations

import base64
import hashlib
import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import Gateway, User, error_of, raw_request, s3_client


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_put_get_head_with_metadata(s3: Any, bucket: str) -> None:
    body = os.urandom(100_000)
    put = s3.put_object(
        Bucket=bucket,
        Key="dir/obj.bin",
        Body=body,
        ContentType="application/x-test",
        ContentEncoding="identity",
        ContentDisposition='attachment; filename="obj.bin"',
        ContentLanguage="en",
        CacheControl="max-age=60",
        Expires=datetime(2030, 1, 1, tzinfo=UTC),
        Metadata={"Color": "blue", "empty": ""},
        ACL="public-read",
    )
    assert put["ETag"] == f'"{md5_hex(body)}"'
    got = s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert got["Body"].read() == body
    assert got["ContentLength"] == len(body)
    assert got["ETag"] == put["ETag"]
    assert got["ContentType"] == "application/x-test"
    assert got["ContentEncoding"] == "identity"
    assert got["ContentDisposition"] == 'attachment; filename="obj.bin"'
    assert got["ContentLanguage"] == "en"
    assert got["CacheControl"] == "max-age=60"
    assert got["Metadata"] == {"color": "blue", "empty": ""}
    assert got["AcceptRanges"] == "bytes"
    head = s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert head["ContentLength"] == len(body)
    assert head["Metadata"] == {"color": "blue", "empty": ""}
    assert abs(head["LastModified"].timestamp() - time.time()) < 60


def test_utf8_metadata_is_signed_and_returned_as_sent(s3: Any, bucket: str) -> None:
    # boto3 sends a str header value as UTF-8 and signs those bytes: the signature must be
    # checked over the bytes received, and the same bytes come back.
    def set_meta(params: dict[str, Any], **_: Any) -> None:
        params["headers"]["x-amz-meta-word"] = "caf\u00e9 \u2603"

    s3.meta.events.register("before-call.s3.PutObject", set_meta)
    try:
        s3.put_object(Bucket=bucket, Key="utf8-meta", Body=b"x")
    finally:
        s3.meta.events.unregister("before-call.s3.PutObject", set_meta)
    got = s3.head_object(Bucket=bucket, Key="utf8-meta")
    sent = got["ResponseMetadata"]["HTTPHeaders"]["x-amz-meta-word"]
    assert sent.encode("latin-1") == "caf\u00e9 \u2603".encode()


def test_default_content_type_and_empty_object(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    got = s3.get_object(Bucket=bucket, Key="empty")
    assert got["Body"].read() == b""
    assert got["ETag"] == f'"{md5_hex(b"")}"'
    assert got["ContentType"] == "binary/octet-stream"


def test_overwrite_replaces_whole(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"a" * 5_000_000, Metadata={"v": "1"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"b" * 10, Metadata={"v": "2"})
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"b" * 10
    assert got["Metadata"] == {"v": "2"}


def test_no_such_key(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="missing/key")
    assert error_of(caught.value) == (404, "NoSuchKey")
    assert caught.value.response["Error"]["Key"] == "missing/key"
    metadata = caught.value.response["ResponseMetadata"]
    assert metadata["RequestId"] == metadata["HTTPHeaders"]["x-amz-request-id"]
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key="missing/key")
    assert error_of(caught.value)[0] == 404


def test_ranges(s3: Any, bucket: str) -> None:
    body = os.urandom(9 * 1024 * 1024 + 17)  # three stripes
    s3.put_object(Bucket=bucket, Key="r", Body=body)
    for header, expected in (
        ("bytes=0-0", body[:1]),
        ("bytes=4194300-4194310", body[4194300:4194311]),  # across a stripe boundary
        ("bytes=-100", body[-100:]),
        ("bytes=9437180-", body[9437180:]),
        ("bytes=5-99999999999", body[5:]),
    ):
        got = s3.get_object(Bucket=bucket, Key="r", Range=header)
        assert got["Body"].read() == expected, header
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert got["ContentRange"].endswith(f"/{len(body)}")
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(body)}-")
    assert error_of(caught.value) == (416, "InvalidRange")


def test_conditional_get(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="c", Body=b"cond")
    etag = s3.head_object(Bucket=bucket, Key="c")["ETag"]
    modified = s3.head_object(Bucket=bucket, Key="c")["LastModified"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"cond"
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert error_of(caught.value) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert error_of(caught.value)[0] == 304
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=modified + timedelta(seconds=10))
    assert error_of(caught.value)[0] == 304
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=modified - timedelta(days=1))
    assert error_of(caught.value) == (412, "PreconditionFailed")
    got = s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=modified - timedelta(days=1))
    assert got["Body"].read() == b"cond"


def test_conditional_put(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="once", Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="once", Body=b"2", IfNoneMatch="*")
    assert error_of(caught.value) == (412, "PreconditionFailed")
    etag = s3.head_object(Bucket=bucket, Key="once")["ETag"]
    s3.put_object(Bucket=bucket, Key="once", Body=b"3", IfMatch=etag)
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="once", Body=b"4", IfMatch=etag)
    assert error_of(caught.value) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"3"


def test_response_overrides(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="o", Body=b"x", ContentType="text/plain")
    got = s3.get_object(
        Bucket=bucket,
        Key="o",
        ResponseContentType="image/png",
        ResponseContentDisposition="inline",
        ResponseCacheControl="no-cache",
        ResponseContentLanguage="fr",
        ResponseContentEncoding="gzip",
        ResponseExpires=datetime(2031, 1, 1, tzinfo=UTC),
    )
    assert got["ContentType"] == "image/png"
    assert got["ContentDisposition"] == "inline"
    assert got["CacheControl"] == "no-cache"
    assert got["ContentLanguage"] == "fr"
    assert got["ContentEncoding"] == "gzip"


def test_content_md5(s3: Any, bucket: str) -> None:
    body = b"digest me"
    good = base64.b64encode(hashlib.md5(body).digest()).decode()
    s3.put_object(Bucket=bucket, Key="m", Body=body, ContentMD5=good)
    bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="m2", Body=body, ContentMD5=bad)
    assert error_of(caught.value) == (400, "BadDigest")
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="m2", Body=body, ContentMD5="not-a-digest")
    assert error_of(caught.value) == (400, "InvalidDigest")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="m2")


@pytest.mark.parametrize("algorithm", ["CRC32", "SHA1", "SHA256"])
def test_checksums_stored_and_returned(s3: Any, bucket: str, algorithm: str) -> None:
    body = os.urandom(300_000)
    put = s3.put_object(
        Bucket=bucket, Key=f"cs-{algorithm}", Body=body, ChecksumAlgorithm=algorithm
    )
    value = put[f"Checksum{algorithm}"]
    got = s3.get_object(Bucket=bucket, Key=f"cs-{algorithm}", ChecksumMode="ENABLED")
    assert got[f"Checksum{algorithm}"] == value
    assert got["Body"].read() == body


def test_crc32c_given_by_the_client(s3: Any, bucket: str) -> None:
    # botocore computes CRC32C only with its optional CRT extension; the value is given.
    import crc32c

    body = os.urandom(70_000)
    value = base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()
    s3.put_object(Bucket=bucket, Key="c32c", Body=body, ChecksumCRC32C=value)
    head = s3.head_object(Bucket=bucket, Key="c32c", ChecksumMode="ENABLED")
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-checksum-crc32c"] == value
    wrong = base64.b64encode((crc32c.crc32c(body) ^ 1).to_bytes(4, "big")).decode()
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="c32c-bad", Body=body, ChecksumCRC32C=wrong)
    assert error_of(caught.value) == (400, "BadDigest")


def test_wrong_checksum_header(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.put_object(
            Bucket=bucket,
            Key="bad",
            Body=b"data",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(b"x").digest()).decode(),
        )
    assert error_of(caught.value) == (400, "BadDigest")


def test_delete_objects_and_quiet(s3: Any, bucket: str) -> None:
    for key in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    result = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "never-was"}]}
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["a", "b", "never-was"]
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "c"}], "Quiet": True})
    assert "Deleted" not in result and "Errors" not in result
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    s3.delete_object(Bucket=bucket, Key="never-was")  # deleting nothing is fine


def test_copy_object(s3: Any, bucket: str) -> None:
    body = os.urandom(6 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="src", Body=body, Metadata={"a": "1"}, ContentType="text/x")
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{md5_hex(body)}"'
    got = s3.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == body
    assert (got["Metadata"], got["ContentType"]) == ({"a": "1"}, "text/x")
    s3.copy_object(
        Bucket=bucket,
        Key="dst2",
        CopySource=f"{bucket}/src",
        MetadataDirective="REPLACE",
        Metadata={"b": "2"},
        ContentType="text/y",
    )
    head = s3.head_object(Bucket=bucket, Key="dst2")
    assert (head["Metadata"], head["ContentType"]) == ({"b": "2"}, "text/y")
    # Replacing metadata of an object in place is a legal copy; copying it unchanged is not.
    s3.copy_object(
        Bucket=bucket,
        Key="src",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        Metadata={"c": "3"},
    )
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"c": "3"}
    with pytest.raises(ClientError) as caught:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert error_of(caught.value) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as caught:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "nope"})
    assert error_of(caught.value) == (404, "NoSuchKey")


def test_copy_source_conditions(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"source")
    etag = s3.head_object(Bucket=bucket, Key="src")["ETag"]
    s3.copy_object(Bucket=bucket, Key="ok", CopySource=f"{bucket}/src", CopySourceIfMatch=etag)
    for condition in (
        {"CopySourceIfMatch": '"feed"'},
        {"CopySourceIfNoneMatch": etag},
        {"CopySourceIfUnmodifiedSince": datetime(2000, 1, 1, tzinfo=UTC)},
        {"CopySourceIfModifiedSince": datetime.now(UTC) + timedelta(days=1)},
    ):
        with pytest.raises(ClientError) as caught:
            s3.copy_object(Bucket=bucket, Key="no", CopySource=f"{bucket}/src", **condition)
        assert error_of(caught.value) == (412, "PreconditionFailed"), condition


def test_presigned_urls(s3: Any, bucket: str, gateway: Gateway, user: User) -> None:
    s3.put_object(Bucket=bucket, Key="shared file.txt", Body=b"for anyone with the link")
    for version in ("s3v4", "s3"):
        signer = s3_client(gateway.url, user, signature_version=version)
        url = signer.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "shared file.txt"}, ExpiresIn=60
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.read() == b"for anyone with the link"
    v4 = s3_client(gateway.url, user)
    put_url = v4.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "uploaded"}, ExpiresIn=60
    )
    request = urllib.request.Request(put_url, data=b"via presigned PUT", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert s3.get_object(Bucket=bucket, Key="uploaded")["Body"].read() == b"via presigned PUT"
    expired = v4.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "shared file.txt"}, ExpiresIn=1
    )
    time.sleep(2)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(expired, timeout=10)
    assert caught.value.code == 403
    assert b"<Code>AccessDenied</Code>" in caught.value.read()
    tampered = url.replace("shared%20file.txt", "other%20file.txt")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(tampered, timeout=10)
    assert caught.value.code == 403


def test_presigned_url_over_a_week_is_malformed(gateway: Gateway, s3: Any, bucket: str) -> None:
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60
    )
    target = url.split(str(gateway.port), 1)[1].replace("X-Amz-Expires=60", "X-Amz-Expires=604801")
    status, _, body = raw_request(gateway, "GET", target)
    assert status == 403 and b"AuthorizationQueryParametersError" in body


def test_signature_mismatch_on_a_modified_request(gateway: Gateway, s3: Any, bucket: str) -> None:
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60
    )
    target = url.split(str(gateway.port), 1)[1].replace(f"/{bucket}/k", f"/{bucket}/j")
    status, _, body = raw_request(gateway, "GET", target)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body


def test_object_acl_and_tags(s3: Any, bucket: str, user: User) -> None:
    s3.put_object(Bucket=bucket, Key="t", Body=b"x", Tagging="project=store&tier=gold")
    assert (
        s3.head_object(Bucket=bucket, Key="t")["ResponseMetadata"]["HTTPHeaders"][
            "x-amz-tagging-count"
        ]
        == "2"
    )
    tags = s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("project", "store"), ("tier", "gold")]
    s3.put_object_tagging(
        Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]}
    )
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [
        {"Key": "only", "Value": "one"}
    ]
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    s3.put_object_acl(Bucket=bucket, Key="t", ACL="authenticated-read")
    grants = s3.get_object_acl(Bucket=bucket, Key="t")["Grants"]
    assert {g["Permission"] for g in grants} == {"FULL_CONTROL", "READ"}
    assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == b"x"  # data untouched


def test_unsupported_headers_are_refused_not_ignored(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="e", Body=b"x", ServerSideEncryption="aws:kms")
    assert error_of(caught.value) == (501, "NotImplemented")
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="e", Body=b"x", StorageClass="GLACIER")
    assert error_of(caught.value) == (501, "NotImplemented")
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="e")


def test_odd_keys_round_trip(s3: Any, bucket: str) -> None:
    keys = ["with space", "ünïcødé/鍵", "plus+sign", "a//b", "tilde~", "q?x=1&y", "x" * 1024]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(keys, key=lambda k: k.encode())
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="x" * 1025, Body=b"")
    assert error_of(caught.value) == (400, "KeyTooLongError")


def test_metadata_too_large(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="meta", Body=b"", Metadata={"big": "v" * 2100})
    assert error_of(caught.value) == (400, "MetadataTooLarge")


def test_sigv2_clients(gateway: Gateway, user: User, bucket: str) -> None:
    v2 = s3_client(gateway.url, user, signature_version="s3")
    v2.put_object(Bucket=bucket, Key="v2 key", Body=b"old style", Metadata={"m": "1"})
    assert v2.get_object(Bucket=bucket, Key="v2 key")["Body"].read() == b"old style"
    assert [o["Key"] for o in v2.list_objects(Bucket=bucket)["Contents"]] == ["v2 key"]


def test_streaming_unsigned_body_over_http_is_verified(
    gateway: Gateway, user: User, bucket: str
) -> None:
    # Without TLS boto3 signs the payload's SHA-256; a body changed on the way fails.
    client = s3_client(gateway.url, user)

    def tamper(request: Any, **_: Any) -> None:
        request.body = b"tampered"

    client.meta.events.register("before-send.s3.PutObject", tamper)
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=bucket, Key="t", Body=b"original")
    assert error_of(caught.value) == (400, "XAmzContentSHA256Mismatch")
