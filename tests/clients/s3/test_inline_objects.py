"""Small objects live in the bucket index (no data object): they read, range, copy, list,
change and version like any other, and their bytes follow them into version records when
versioning starts."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from store.gateways.s3.layout import INLINE_MAX
from tests.clients.s3.conftest import empty_and_delete, failure
from tests.clients.s3.test_gateways import data_objects
from tests.cluster.harness import Cluster


def body_of(s3: Any, bucket: str, key: str, **more: Any) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=key, **more)["Body"].read()
    return data


def test_small_objects_have_no_data_object(cluster: Cluster, s3: Any, bucket: str) -> None:
    before = data_objects(cluster)
    small, limit = os.urandom(4096), os.urandom(INLINE_MAX)
    s3.put_object(Bucket=bucket, Key="small", Body=small, ContentType="text/plain")
    s3.put_object(Bucket=bucket, Key="limit", Body=limit)
    assert not data_objects(cluster) - before  # (earlier tests' data may go meanwhile)
    s3.put_object(Bucket=bucket, Key="over", Body=os.urandom(INLINE_MAX + 1))
    assert len(data_objects(cluster) - before) == 1
    assert body_of(s3, bucket, "small") == small and body_of(s3, bucket, "limit") == limit
    head = s3.head_object(Bucket=bucket, Key="small")
    assert head["ContentLength"] == 4096 and head["ContentType"] == "text/plain"
    assert head["ETag"] == f'"{hashlib.md5(small).hexdigest()}"'
    assert body_of(s3, bucket, "small", Range="bytes=100-199") == small[100:200]
    assert body_of(s3, bucket, "small", Range="bytes=-10") == small[-10:]
    listed = {o["Key"]: o for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed["small"]["Size"] == 4096 and listed["limit"]["Size"] == INLINE_MAX
    with_checksum = s3.put_object(
        Bucket=bucket, Key="summed", Body=b"checked", ChecksumAlgorithm="SHA256"
    )
    got = s3.get_object(Bucket=bucket, Key="summed", ChecksumMode="ENABLED")
    assert got["ChecksumSHA256"] == with_checksum["ChecksumSHA256"]
    assert got["Body"].read() == b"checked"


def test_overwrites_deletes_and_conditions(s3: Any, bucket: str) -> None:
    large = os.urandom(INLINE_MAX * 4)
    s3.put_object(Bucket=bucket, Key="k", Body=b"one")
    s3.put_object(Bucket=bucket, Key="k", Body=b"two")
    assert body_of(s3, bucket, "k") == b"two"
    s3.put_object(Bucket=bucket, Key="k", Body=large)
    assert body_of(s3, bucket, "k") == large
    s3.put_object(Bucket=bucket, Key="k", Body=b"three")
    assert body_of(s3, bucket, "k") == b"three"
    stopped = failure(s3.put_object, Bucket=bucket, Key="k", Body=b"four", IfNoneMatch="*")
    assert stopped == (412, "PreconditionFailed")
    s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
    s3.put_object_acl(Bucket=bucket, Key="k", ACL="public-read")
    assert body_of(s3, bucket, "k") == b"three"  # metadata changes keep the bytes
    s3.delete_object(Bucket=bucket, Key="k")
    assert failure(s3.get_object, Bucket=bucket, Key="k") == (404, "NoSuchKey")
    s3.put_object(Bucket=bucket, Key="k", Body=b"again")
    assert body_of(s3, bucket, "k") == b"again"


def test_copies_of_small_objects(cluster: Cluster, s3: Any, bucket: str) -> None:
    data = os.urandom(10_000)
    s3.put_object(Bucket=bucket, Key="src", Body=data)
    before = data_objects(cluster)
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert body_of(s3, bucket, "dst") == data
    # A small object stored in a data object (written while versioning was on) is copied
    # into the index of a bucket that never was versioned.
    versioned = f"{bucket}-v"
    s3.create_bucket(Bucket=versioned)
    try:
        s3.put_bucket_versioning(Bucket=versioned, VersioningConfiguration={"Status": "Enabled"})
        s3.put_object(Bucket=versioned, Key="v", Body=b"from a data object")
        with_data = data_objects(cluster)
        assert len(with_data - before) == 1
        s3.copy_object(Bucket=bucket, Key="dst2", CopySource={"Bucket": versioned, "Key": "v"})
        assert not data_objects(cluster) - with_data
        assert body_of(s3, bucket, "dst2") == b"from a data object"
    finally:
        empty_and_delete(s3, versioned)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    part = s3.upload_part_copy(
        Bucket=bucket,
        Key="mp",
        UploadId=upload,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "src"},
        CopySourceRange="bytes=1000-1999",
    )
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
    )
    assert body_of(s3, bucket, "mp") == data[1000:2000]


def test_small_objects_become_versions(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"from before versioning")
    s3.put_object(Bucket=bucket, Key="gone", Body=b"deleted later")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    # Tagging the unrecorded null version rewrites the key's entry: the bytes go along.
    s3.put_object_tagging(
        Bucket=bucket, Key="gone", Tagging={"TagSet": [{"Key": "t", "Value": "v"}]}
    )
    assert body_of(s3, bucket, "gone") == b"deleted later"
    new = s3.put_object(Bucket=bucket, Key="k", Body=b"version two")["VersionId"]
    assert body_of(s3, bucket, "k") == b"version two"
    assert body_of(s3, bucket, "k", VersionId="null") == b"from before versioning"
    # With the newer version gone, the null version is current again, bytes and all.
    s3.delete_object(Bucket=bucket, Key="k", VersionId=new)
    assert body_of(s3, bucket, "k") == b"from before versioning"
    s3.put_object(Bucket=bucket, Key="k", Body=b"version three")
    marker = s3.delete_object(Bucket=bucket, Key="gone")
    assert marker["DeleteMarker"]
    assert body_of(s3, bucket, "gone", VersionId="null") == b"deleted later"
    # Suspended: a new null version replaces the old one.
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    s3.put_object(Bucket=bucket, Key="k", Body=b"the new null")
    assert body_of(s3, bucket, "k", VersionId="null") == b"the new null"
    versions = s3.list_object_versions(Bucket=bucket, Prefix="k")["Versions"]
    assert sorted(v["Size"] for v in versions) == sorted([len(b"the new null"), 13])
    s3.delete_object(Bucket=bucket, Key="k", VersionId="null")
    assert body_of(s3, bucket, "k") == b"version three"
