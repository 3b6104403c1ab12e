"""Object lock through boto3: buckets created with it stay versioned, default retention,
retention and legal holds that refuse deleting a version (GOVERNANCE bypassed on request,
COMPLIANCE never until it expires), and locks asked for at upload."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import error_of

UTC = datetime.UTC


def later(seconds: float) -> datetime.datetime:
    return (datetime.datetime.now(UTC) + datetime.timedelta(seconds=seconds)).replace(microsecond=0)


@pytest.fixture
def locked(s3: Any) -> Iterator[str]:
    """A bucket with object lock; emptied (bypassing GOVERNANCE) and deleted after."""
    name = f"lock-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        for version in page.get("Versions", []):
            s3.put_object_legal_hold(
                Bucket=name,
                Key=version["Key"],
                VersionId=version["VersionId"],
                LegalHold={"Status": "OFF"},
            )
        for version in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(
                Bucket=name,
                Key=version["Key"],
                VersionId=version["VersionId"],
                BypassGovernanceRetention=True,
            )
    s3.delete_bucket(Bucket=name)


def test_configuration(s3: Any, locked: str, bucket: str) -> None:
    assert s3.get_bucket_versioning(Bucket=locked)["Status"] == "Enabled"
    assert s3.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"] == {
        "ObjectLockEnabled": "Enabled"
    }
    with pytest.raises(ClientError) as caught:
        s3.put_bucket_versioning(Bucket=locked, VersioningConfiguration={"Status": "Suspended"})
    assert error_of(caught.value) == (409, "InvalidBucketState")
    conf = {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2}},
    }
    s3.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration=conf)
    assert s3.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"] == conf
    bad = {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 0}},
    }
    with pytest.raises(ClientError) as caught:
        s3.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration=bad)
    assert error_of(caught.value) == (400, "InvalidRetentionPeriod")
    # A plain bucket has none, and gets one only once versioned.
    with pytest.raises(ClientError) as caught:
        s3.get_object_lock_configuration(Bucket=bucket)
    assert error_of(caught.value) == (404, "ObjectLockConfigurationNotFoundError")
    with pytest.raises(ClientError) as caught:
        s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=conf)
    assert error_of(caught.value) == (409, "InvalidBucketState")
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="k", Body=b"x", ObjectLockLegalHoldStatus="ON")
    assert error_of(caught.value) == (400, "InvalidRequest")


def test_default_retention_protects_new_versions(s3: Any, locked: str) -> None:
    conf = {
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
    }
    s3.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration=conf)
    version = s3.put_object(Bucket=locked, Key="k", Body=b"x")["VersionId"]
    head = s3.head_object(Bucket=locked, Key="k")
    assert head["ObjectLockMode"] == "GOVERNANCE"
    remaining = head["ObjectLockRetainUntilDate"] - datetime.datetime.now(UTC)
    assert datetime.timedelta(hours=23) < remaining <= datetime.timedelta(days=1)
    with pytest.raises(ClientError) as caught:
        s3.delete_object(Bucket=locked, Key="k", VersionId=version)
    assert error_of(caught.value) == (403, "AccessDenied")
    # Deleting without a version only adds a delete marker.
    assert s3.delete_object(Bucket=locked, Key="k")["DeleteMarker"] is True
    s3.delete_object(Bucket=locked, Key="k", VersionId=version, BypassGovernanceRetention=True)
    assert all(
        v["VersionId"] != version
        for v in s3.list_object_versions(Bucket=locked).get("Versions", [])
    )


def test_governance_retention(s3: Any, locked: str) -> None:
    version = s3.put_object(Bucket=locked, Key="k", Body=b"x")["VersionId"]
    with pytest.raises(ClientError) as caught:
        s3.get_object_retention(Bucket=locked, Key="k")
    assert error_of(caught.value) == (404, "NoSuchObjectLockConfiguration")
    far = later(86_400)
    s3.put_object_retention(
        Bucket=locked, Key="k", Retention={"Mode": "GOVERNANCE", "RetainUntilDate": far}
    )
    assert s3.get_object_retention(Bucket=locked, Key="k", VersionId=version)["Retention"] == {
        "Mode": "GOVERNANCE",
        "RetainUntilDate": far,
    }
    sooner = {"Mode": "GOVERNANCE", "RetainUntilDate": later(3_600)}
    with pytest.raises(ClientError) as caught:
        s3.put_object_retention(Bucket=locked, Key="k", Retention=sooner)
    assert error_of(caught.value) == (403, "AccessDenied")
    s3.put_object_retention(
        Bucket=locked, Key="k", Retention=sooner, BypassGovernanceRetention=True
    )
    result = s3.delete_objects(
        Bucket=locked, Delete={"Objects": [{"Key": "k", "VersionId": version}]}
    )
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("k", "AccessDenied")]
    assert s3.get_object(Bucket=locked, Key="k", VersionId=version)["Body"].read() == b"x"
    result = s3.delete_objects(
        Bucket=locked,
        Delete={"Objects": [{"Key": "k", "VersionId": version}]},
        BypassGovernanceRetention=True,
    )
    assert [d["VersionId"] for d in result["Deleted"]] == [version]


def test_compliance_retention_holds_until_it_expires(s3: Any, locked: str) -> None:
    until = later(4)
    version = s3.put_object(
        Bucket=locked,
        Key="k",
        Body=b"x",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )["VersionId"]
    head = s3.head_object(Bucket=locked, Key="k")
    assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"]) == ("COMPLIANCE", until)
    for bypass in (False, True):
        with pytest.raises(ClientError) as caught:
            s3.delete_object(
                Bucket=locked, Key="k", VersionId=version, BypassGovernanceRetention=bypass
            )
        assert error_of(caught.value) == (403, "AccessDenied")
    with pytest.raises(ClientError) as caught:
        s3.put_object_retention(
            Bucket=locked,
            Key="k",
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until},
            BypassGovernanceRetention=True,
        )
    assert error_of(caught.value) == (403, "AccessDenied")
    time.sleep(max(0.0, (until - datetime.datetime.now(UTC)).total_seconds()) + 1)
    s3.delete_object(Bucket=locked, Key="k", VersionId=version)


def test_legal_hold(s3: Any, locked: str) -> None:
    upload = s3.create_multipart_upload(Bucket=locked, Key="k", ObjectLockLegalHoldStatus="ON")
    part = s3.upload_part(
        Bucket=locked, Key="k", UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
    )
    version = s3.complete_multipart_upload(
        Bucket=locked,
        Key="k",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )["VersionId"]
    assert s3.get_object_legal_hold(Bucket=locked, Key="k")["LegalHold"] == {"Status": "ON"}
    assert s3.head_object(Bucket=locked, Key="k")["ObjectLockLegalHoldStatus"] == "ON"
    with pytest.raises(ClientError) as caught:
        s3.delete_object(Bucket=locked, Key="k", VersionId=version, BypassGovernanceRetention=True)
    assert error_of(caught.value) == (403, "AccessDenied")
    with pytest.raises(ClientError) as caught:
        s3.put_object_legal_hold(Bucket=locked, Key="k", LegalHold={"Status": "on"})
    assert error_of(caught.value) == (400, "MalformedXML")
    s3.put_object_legal_hold(Bucket=locked, Key="k", VersionId=version, LegalHold={"Status": "OFF"})
    s3.delete_object(Bucket=locked, Key="k", VersionId=version)
