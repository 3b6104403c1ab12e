"""Multipart uploads through boto3: the whole life of an upload, and its errors."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import error_of

MIB = 1024 * 1024


def multipart_etag(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def upload_parts(
    s3: Any, bucket: str, key: str, upload_id: str, parts: list[bytes]
) -> list[dict[str, Any]]:
    done = []
    for number, data in enumerate(parts, start=1):
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )["ETag"]
        assert etag == f'"{hashlib.md5(data).hexdigest()}"'
        done.append({"PartNumber": number, "ETag": etag})
    return done


def test_complete_upload(s3: Any, bucket: str) -> None:
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB + 3), os.urandom(1234)]
    created = s3.create_multipart_upload(
        Bucket=bucket, Key="big", ContentType="video/x-test", Metadata={"m": "1"}
    )
    upload_id = created["UploadId"]
    assert (created["Bucket"], created["Key"]) == (bucket, "big")
    done = upload_parts(s3, bucket, "big", upload_id, parts)
    listed = s3.list_parts(Bucket=bucket, Key="big", UploadId=upload_id)
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [
        (1, 5 * MIB),
        (2, 5 * MIB + 3),
        (3, 1234),
    ]
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("big", upload_id)]
    result = s3.complete_multipart_upload(
        Bucket=bucket, Key="big", UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    assert result["ETag"] == multipart_etag(parts)
    assert result["Key"] == "big" and result["Bucket"] == bucket
    got = s3.get_object(Bucket=bucket, Key="big")
    assert got["Body"].read() == b"".join(parts)
    assert (got["ContentType"], got["Metadata"], got["ETag"]) == (
        "video/x-test",
        {"m": "1"},
        result["ETag"],
    )
    # Ranges across part boundaries, and parts by number.
    whole = b"".join(parts)
    ranged = s3.get_object(Bucket=bucket, Key="big", Range=f"bytes={5 * MIB - 10}-{5 * MIB + 9}")
    assert ranged["Body"].read() == whole[5 * MIB - 10 : 5 * MIB + 10]
    second = s3.get_object(Bucket=bucket, Key="big", PartNumber=2)
    assert second["Body"].read() == parts[1]
    assert second["PartsCount"] == 3 and second["ContentLength"] == len(parts[1])
    assert s3.head_object(Bucket=bucket, Key="big", PartNumber=3)["ContentLength"] == 1234
    # The upload is gone once completed.
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.list_parts(Bucket=bucket, Key="big", UploadId=upload_id)
    assert error_of(caught.value) == (404, "NoSuchUpload")


def test_part_reuploaded_and_subset_completed(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    first = os.urandom(5 * MIB)
    upload_parts(s3, bucket, "k", upload_id, [os.urandom(5 * MIB), b"tail", b"unused"])
    # Part 1 again: it replaces the first.
    etag1 = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=first)[
        "ETag"
    ]
    etag2 = f'"{hashlib.md5(b"tail").hexdigest()}"'
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="k",
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": etag1}, {"PartNumber": 2, "ETag": etag2}]
        },
    )
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == first + b"tail"


def test_entity_too_small(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="small")["UploadId"]
    done = upload_parts(s3, bucket, "small", upload_id, [b"a" * 1000, b"b" * 1000])
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="small", UploadId=upload_id, MultipartUpload={"Parts": done}
        )
    assert error_of(caught.value) == (400, "EntityTooSmall")
    # The failed completion left the upload usable: a single small part is fine.
    s3.complete_multipart_upload(
        Bucket=bucket, Key="small", UploadId=upload_id, MultipartUpload={"Parts": done[-1:]}
    )
    assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == b"b" * 1000


def test_invalid_part_and_order(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="p")["UploadId"]
    done = upload_parts(s3, bucket, "p", upload_id, [os.urandom(5 * MIB), b"end"])
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(
            Bucket=bucket,
            Key="p",
            UploadId=upload_id,
            MultipartUpload={"Parts": [done[1], done[0]]},
        )
    assert error_of(caught.value) == (400, "InvalidPartOrder")
    wrong = [done[0], {"PartNumber": 2, "ETag": '"00000000000000000000000000000000"'}]
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="p", UploadId=upload_id, MultipartUpload={"Parts": wrong}
        )
    assert error_of(caught.value) == (400, "InvalidPart")
    missing = [*done, {"PartNumber": 7, "ETag": done[0]["ETag"]}]
    with pytest.raises(ClientError) as caught:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="p", UploadId=upload_id, MultipartUpload={"Parts": missing}
        )
    assert error_of(caught.value) == (400, "InvalidPart")
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="p")
    assert error_of(caught.value) == (404, "NoSuchKey")


def test_abort(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="a")["UploadId"]
    upload_parts(s3, bucket, "a", upload_id, [b"x" * 100])
    s3.abort_multipart_upload(Bucket=bucket, Key="a", UploadId=upload_id)
    with pytest.raises(ClientError) as caught:
        s3.upload_part(Bucket=bucket, Key="a", UploadId=upload_id, PartNumber=2, Body=b"late")
    assert error_of(caught.value) == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as caught:
        s3.abort_multipart_upload(Bucket=bucket, Key="a", UploadId=upload_id)
    assert error_of(caught.value) == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as caught:
        s3.list_parts(Bucket=bucket, Key="a", UploadId="nonexistent0upload0id")
    assert error_of(caught.value) == (404, "NoSuchUpload")


def test_bad_part_numbers(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="n")["UploadId"]
    for number in (0, 10001):
        with pytest.raises(ClientError) as caught:
            s3.upload_part(Bucket=bucket, Key="n", UploadId=upload_id, PartNumber=number, Body=b"x")
        assert error_of(caught.value) == (400, "InvalidArgument")
    s3.abort_multipart_upload(Bucket=bucket, Key="n", UploadId=upload_id)


def test_upload_part_copy_with_ranges(s3: Any, bucket: str) -> None:
    source = os.urandom(12 * MIB)
    s3.put_object(Bucket=bucket, Key="source", Body=source)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    ranges = [(0, 6 * MIB - 1), (6 * MIB, 12 * MIB - 1)]
    done = []
    for number, (first, last) in enumerate(ranges, start=1):
        result = s3.upload_part_copy(
            Bucket=bucket,
            Key="assembled",
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": bucket, "Key": "source"},
            CopySourceRange=f"bytes={first}-{last}",
        )
        done.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
    s3.complete_multipart_upload(
        Bucket=bucket, Key="assembled", UploadId=upload_id, MultipartUpload={"Parts": done}
    )
    assert s3.get_object(Bucket=bucket, Key="assembled")["Body"].read() == source
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="bad")["UploadId"]
    with pytest.raises(ClientError) as caught:
        s3.upload_part_copy(
            Bucket=bucket,
            Key="bad",
            UploadId=upload_id,
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": "source"},
            CopySourceRange=f"bytes=0-{12 * MIB}",
        )
    assert error_of(caught.value) == (416, "InvalidRange")
    s3.abort_multipart_upload(Bucket=bucket, Key="bad", UploadId=upload_id)


def test_list_multipart_uploads_paging(s3: Any, bucket: str) -> None:
    made = []
    for key in ("a/1", "a/2", "b", "b", "c/d/e"):
        made.append((key, s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]))
    seen: list[tuple[str, str]] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "MaxUploads": 2}
    while True:
        page = s3.list_multipart_uploads(**kwargs)
        seen.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads", []))
        if not page["IsTruncated"]:
            break
        kwargs["KeyMarker"] = page["NextKeyMarker"]
        kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker", "")
    assert seen == sorted(made)
    grouped = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["a/", "c/"]
    assert [u["Key"] for u in grouped["Uploads"]] == ["b", "b"]
    for key, upload_id in made:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)


def test_list_parts_paging(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="lp")["UploadId"]
    upload_parts(s3, bucket, "lp", upload_id, [b"p"] * 5)
    first = s3.list_parts(Bucket=bucket, Key="lp", UploadId=upload_id, MaxParts=2)
    assert [p["PartNumber"] for p in first["Parts"]] == [1, 2] and first["IsTruncated"]
    rest = s3.list_parts(
        Bucket=bucket, Key="lp", UploadId=upload_id, PartNumberMarker=first["NextPartNumberMarker"]
    )
    assert [p["PartNumber"] for p in rest["Parts"]] == [3, 4, 5] and not rest["IsTruncated"]
    s3.abort_multipart_upload(Bucket=bucket, Key="lp", UploadId=upload_id)


def test_managed_transfer_of_a_large_file(s3: Any, bucket: str, tmp_path: Any) -> None:
    from boto3.s3.transfer import TransferConfig

    data = os.urandom(40 * MIB)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    config = TransferConfig(
        multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4
    )
    s3.upload_file(str(source), bucket, "managed", Config=config)
    target = tmp_path / "target.bin"
    s3.download_file(bucket, "managed", str(target), Config=config)
    assert target.read_bytes() == data
    assert s3.head_object(Bucket=bucket, Key="managed")["ETag"].endswith('-5"')
