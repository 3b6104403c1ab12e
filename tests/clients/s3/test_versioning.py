"""Versioned buckets through boto3: every version kept and readable by id, delete markers,
deleting versions for good (and freeing their data), the null version of objects from
before versioning and of suspended buckets, listings of versions in pages, copies and
multipart uploads of versions, and concurrent writers of one key."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import POOL, error_of
from tests.clients.s3.test_gateways import data_objects
from tests.cluster.harness import Cluster, wait_until

MIB = 1024 * 1024


def enable(s3: Any, bucket: str, status: str = "Enabled") -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})


def body(s3: Any, bucket: str, key: str, version: str | None = None) -> bytes:
    extra = {"VersionId": version} if version is not None else {}
    return bytes(s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read())


def history(s3: Any, bucket: str, **params: Any) -> list[tuple[str, str, bool, bool]]:
    """(key, version id, is latest, is a delete marker) of every version, as listed."""
    found = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, **params):
        merged = [(v, False) for v in page.get("Versions", [])] + [
            (m, True) for m in page.get("DeleteMarkers", [])
        ]
        # boto3 splits one ordered listing in two lists: order them again by key, latest
        # first (a key's older delete markers come after its older versions here).
        merged.sort(key=lambda item: (item[0]["Key"], not item[0]["IsLatest"]))
        found.extend((v["Key"], v["VersionId"], v["IsLatest"], marker) for v, marker in merged)
    return found


def test_configuration(s3: Any, bucket: str) -> None:
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    enable(s3, bucket)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    enable(s3, bucket, "Suspended")
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    with pytest.raises(ClientError) as caught:
        enable(s3, bucket, "Sometimes")
    assert error_of(caught.value) == (400, "MalformedXML")


def test_every_version_is_kept_and_read_by_id(s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    ids = [s3.put_object(Bucket=bucket, Key="k", Body=b"v%d" % i)["VersionId"] for i in range(3)]
    assert len(set(ids)) == 3 and "null" not in ids
    assert body(s3, bucket, "k") == b"v2"
    for i, version in enumerate(ids):
        assert body(s3, bucket, "k", version) == b"v%d" % i
        head = s3.head_object(Bucket=bucket, Key="k", VersionId=version)
        assert head["VersionId"] == version and head["ContentLength"] == 2
    assert s3.get_object(Bucket=bucket, Key="k")["VersionId"] == ids[2]
    assert history(s3, bucket) == [
        ("k", ids[2], True, False),
        ("k", ids[1], False, False),
        ("k", ids[0], False, False),
    ]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="k", VersionId="0" * 16 + "01234567")
    assert error_of(caught.value) == (404, "NoSuchVersion")
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="k", VersionId="not-a-version")
    assert error_of(caught.value) == (400, "InvalidArgument")


def test_delete_markers(s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    first = s3.put_object(Bucket=bucket, Key="k", Body=b"kept")["VersionId"]
    deleted = s3.delete_object(Bucket=bucket, Key="k")
    assert deleted["DeleteMarker"] is True
    marker = deleted["VersionId"]
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="k")
    assert error_of(caught.value) == (404, "NoSuchKey")
    headers = caught.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amz-delete-marker"] == "true" and headers["x-amz-version-id"] == marker
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key="k", VersionId=marker)
    assert error_of(caught.value)[0] == 405
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    assert history(s3, bucket) == [("k", marker, True, True), ("k", first, False, False)]
    assert body(s3, bucket, "k", first) == b"kept"
    # A bucket that holds versions is not empty.
    with pytest.raises(ClientError) as caught:
        s3.delete_bucket(Bucket=bucket)
    assert error_of(caught.value) == (409, "BucketNotEmpty")
    # Deleting the marker brings the object back.
    removed = s3.delete_object(Bucket=bucket, Key="k", VersionId=marker)
    assert removed["DeleteMarker"] is True and removed["VersionId"] == marker
    assert body(s3, bucket, "k") == b"kept"


def test_deleting_versions_for_good_frees_only_their_data(
    cluster: Cluster, s3: Any, bucket: str
) -> None:
    enable(s3, bucket)
    before = data_objects(cluster)
    kept = os.urandom(MIB)
    old = s3.put_object(Bucket=bucket, Key="k", Body=kept)["VersionId"]
    old_data = data_objects(cluster) - before
    new = s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(MIB))["VersionId"]
    new_data = data_objects(cluster) - before - old_data
    assert len(old_data) == 1 and len(new_data) == 1
    s3.delete_object(Bucket=bucket, Key="k")  # a marker: no data goes
    # The orphan sweep sees the versions' data as referenced.
    cluster.cli("s3", "gc", "--orphans", "--min-age", "0", "--pool", POOL)
    assert old_data | new_data <= data_objects(cluster)
    s3.delete_object(Bucket=bucket, Key="k", VersionId=new)
    wait_until(lambda: not (data_objects(cluster) & new_data), "the deleted version's data")
    assert old_data <= data_objects(cluster)
    assert body(s3, bucket, "k", old) == kept
    assert [v for _, v, _, _ in history(s3, bucket)][1:] == [old]


def test_objects_from_before_versioning_are_the_null_version(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"before")
    enable(s3, bucket)
    assert s3.head_object(Bucket=bucket, Key="k")["VersionId"] == "null"
    new = s3.put_object(Bucket=bucket, Key="k", Body=b"after")["VersionId"]
    assert history(s3, bucket) == [("k", new, True, False), ("k", "null", False, False)]
    assert body(s3, bucket, "k", "null") == b"before"
    # Suspended: writes replace the null version and keep the others.
    enable(s3, bucket, "Suspended")
    s3.put_object(Bucket=bucket, Key="k", Body=b"suspended")
    assert history(s3, bucket) == [("k", "null", True, False), ("k", new, False, False)]
    assert body(s3, bucket, "k") == b"suspended" == body(s3, bucket, "k", "null")
    deleted = s3.delete_object(Bucket=bucket, Key="k")
    assert deleted["DeleteMarker"] is True and deleted["VersionId"] == "null"
    assert history(s3, bucket) == [("k", "null", True, True), ("k", new, False, False)]
    s3.delete_object(Bucket=bucket, Key="k", VersionId="null")
    assert body(s3, bucket, "k") == b"after"


def test_listing_versions_in_pages(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a/legacy", Body=b"x")  # an unrecorded null version
    enable(s3, bucket)
    for key in ("a/legacy", "a/one", "b", "c/two"):
        for _ in range(2):
            s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    s3.delete_object(Bucket=bucket, Key="b")
    enable(s3, bucket, "Suspended")
    s3.put_object(Bucket=bucket, Key="c/two", Body=b"null now")
    whole = history(s3, bucket)
    assert len(whole) == 3 + 2 + 3 + 3
    # history() regroups what boto3 splits; the listing itself must come in key order.
    listed = s3.list_object_versions(Bucket=bucket)
    for kind in ("Versions", "DeleteMarkers"):
        keys = [v["Key"] for v in listed[kind]]
        assert keys == sorted(keys)
    assert [latest for _, _, latest, _ in whole].count(True) == 4
    for size in (1, 2, 3, 5):
        assert history(s3, bucket, PaginationConfig={"PageSize": size}) == whole
    by_folder = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in by_folder["CommonPrefixes"]] == ["a/", "c/"]
    assert {v["Key"] for v in by_folder["Versions"]} == {"b"}
    assert [m["Key"] for m in by_folder["DeleteMarkers"]] == ["b"]
    under_a = history(s3, bucket, Prefix="a/")
    assert [(k, latest) for k, _, latest, _ in under_a] == [
        ("a/legacy", True),
        ("a/legacy", False),
        ("a/legacy", False),
        ("a/one", True),
        ("a/one", False),
    ]
    assert under_a[2][1] == "null"


def test_copies_and_multipart_uploads_of_versions(s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    old = s3.put_object(Bucket=bucket, Key="src", Body=b"old source")["VersionId"]
    s3.put_object(Bucket=bucket, Key="src", Body=b"new source")
    copied = s3.copy_object(
        Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src", "VersionId": old}
    )
    assert copied["CopySourceVersionId"] == old and copied["VersionId"] not in (None, "null")
    assert body(s3, bucket, "dst") == b"old source"
    # Copying an older version over the current one restores it.
    s3.copy_object(
        Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src", "VersionId": old}
    )
    assert body(s3, bucket, "src") == b"old source"
    assert len(history(s3, bucket, Prefix="src")) == 3
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    part = s3.upload_part_copy(
        Bucket=bucket,
        Key="mp",
        UploadId=upload,
        PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "src", "VersionId": old},
    )
    assert part["CopySourceVersionId"] == old
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]},
    )
    assert done["VersionId"] == s3.head_object(Bucket=bucket, Key="mp")["VersionId"]
    assert body(s3, bucket, "mp") == b"old source"


def test_delete_objects_with_and_without_versions(s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    a = s3.put_object(Bucket=bucket, Key="a", Body=b"a")["VersionId"]
    s3.put_object(Bucket=bucket, Key="b", Body=b"b")
    result = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a", "VersionId": a}, {"Key": "b"}]}
    )
    deleted = {d["Key"]: d for d in result["Deleted"]}
    assert deleted["a"]["VersionId"] == a and "DeleteMarker" not in deleted["a"]
    assert deleted["b"]["DeleteMarker"] is True and deleted["b"]["DeleteMarkerVersionId"]
    assert [(k, marker) for k, _, _, marker in history(s3, bucket)] == [
        ("b", True),
        ("b", False),
    ]


def test_tags_of_one_version(s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    old = s3.put_object(Bucket=bucket, Key="k", Body=b"1")["VersionId"]
    s3.put_object(Bucket=bucket, Key="k", Body=b"2")
    tagging = {"TagSet": [{"Key": "state", "Value": "archived"}]}
    s3.put_object_tagging(Bucket=bucket, Key="k", VersionId=old, Tagging=tagging)
    assert s3.get_object_tagging(Bucket=bucket, Key="k", VersionId=old)["TagSet"] == [
        {"Key": "state", "Value": "archived"}
    ]
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []


def test_concurrent_writers_of_one_key_each_make_a_version(s3: Any, bucket: str) -> None:
    enable(s3, bucket)
    ids: list[str] = []

    def write(i: int) -> None:
        ids.append(s3.put_object(Bucket=bucket, Key="hot", Body=b"%d" % i)["VersionId"])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    listed = history(s3, bucket)
    assert sorted(v for _, v, _, _ in listed) == sorted(ids) and len(set(ids)) == 12
    assert listed[0][1] == s3.head_object(Bucket=bucket, Key="hot")["VersionId"]
