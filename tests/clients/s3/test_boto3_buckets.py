"""Bucket operations through boto3, and the errors S3 defines for them."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import REGION, Gateway, User, error_of, raw_request, s3_client


def fresh_name() -> str:
    return f"bkt-{uuid.uuid4().hex[:16]}"


def test_create_list_head_delete(s3: Any, user: User) -> None:
    name = fresh_name()
    response = s3.create_bucket(Bucket=name)
    assert response["Location"] == f"/{name}"
    listed = s3.list_buckets()
    assert name in [b["Name"] for b in listed["Buckets"]]
    assert listed["Owner"] == {"ID": user.id, "DisplayName": user.name}
    head = s3.head_bucket(Bucket=name)
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == REGION
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] is None
    assert "Status" not in s3.get_bucket_versioning(Bucket=name)
    s3.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as caught:
        s3.head_bucket(Bucket=name)
    assert error_of(caught.value)[0] == 404


def test_create_with_location_constraint(s3: Any) -> None:
    name = fresh_name()
    with pytest.raises(ClientError) as caught:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert error_of(caught.value) == (400, "IllegalLocationConstraintException")
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.delete_bucket(Bucket=name)


def test_creating_an_existing_bucket(
    s3: Any, gateway: Gateway, gateway_factory: Callable[..., Gateway], user: User, other_user: User
) -> None:
    name = fresh_name()
    s3.create_bucket(Bucket=name)
    try:
        # us-east-1 keeps S3's legacy answer: your own bucket again is a success ...
        s3.create_bucket(Bucket=name)
        # ... every other region answers BucketAlreadyOwnedByYou.
        elsewhere = gateway_factory("--region", "eu-west-1")
        regional = s3_client(elsewhere.url, user, region_name="eu-west-1")
        with pytest.raises(ClientError) as caught:
            regional.create_bucket(
                Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
            )
        assert error_of(caught.value) == (409, "BucketAlreadyOwnedByYou")
        other = s3_client(gateway.url, other_user)
        with pytest.raises(ClientError) as caught:
            other.create_bucket(Bucket=name)
        assert error_of(caught.value) == (409, "BucketAlreadyExists")
        # Nor may anyone else use it.
        with pytest.raises(ClientError) as caught:
            other.list_objects_v2(Bucket=name)
        assert error_of(caught.value) == (403, "AccessDenied")
        with pytest.raises(ClientError) as caught:
            other.put_object(Bucket=name, Key="k", Body=b"x")
        assert error_of(caught.value) == (403, "AccessDenied")
    finally:
        s3.delete_bucket(Bucket=name)


@pytest.mark.parametrize("name", ["ab", "UPPER", "under_score", "192.168.1.1", "-dash", "a..b"])
def test_invalid_bucket_name(s3: Any, name: str) -> None:
    from botocore.exceptions import ParamValidationError

    try:
        s3.create_bucket(Bucket=name)
    except ParamValidationError:
        return  # boto3 itself refused to send it
    except ClientError as exc:
        assert error_of(exc) == (400, "InvalidBucketName")
        return
    raise AssertionError(f"bucket {name!r} was created")


def test_no_such_bucket(s3: Any) -> None:
    name = fresh_name()
    for call in (
        lambda: s3.list_objects_v2(Bucket=name),
        lambda: s3.put_object(Bucket=name, Key="k", Body=b"x"),
        lambda: s3.get_object(Bucket=name, Key="k"),
        lambda: s3.delete_bucket(Bucket=name),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert error_of(caught.value) == (404, "NoSuchBucket")
        assert caught.value.response["Error"]["BucketName"] == name


def test_delete_only_when_empty(s3: Any) -> None:
    name = fresh_name()
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    with pytest.raises(ClientError) as caught:
        s3.delete_bucket(Bucket=name)
    assert error_of(caught.value) == (409, "BucketNotEmpty")
    # The failed delete left the bucket whole.
    assert s3.get_object(Bucket=name, Key="k")["Body"].read() == b"x"
    s3.put_object(Bucket=name, Key="k2", Body=b"y")
    s3.delete_objects(Bucket=name, Delete={"Objects": [{"Key": "k"}, {"Key": "k2"}]})
    upload = s3.create_multipart_upload(Bucket=name, Key="pending")["UploadId"]
    s3.delete_bucket(Bucket=name)  # uploads in progress are aborted with it
    with pytest.raises(ClientError):
        s3.list_parts(Bucket=name, Key="pending", UploadId=upload)


def test_acl_canned_and_reported(s3: Any, user: User) -> None:
    name = fresh_name()
    s3.create_bucket(Bucket=name, ACL="public-read")
    try:
        acl = s3.get_bucket_acl(Bucket=name)
        assert acl["Owner"]["ID"] == user.id
        grants = {
            (g["Grantee"].get("URI", g["Grantee"].get("ID")), g["Permission"])
            for g in acl["Grants"]
        }
        assert grants == {
            (user.id, "FULL_CONTROL"),
            ("http://acs.amazonaws.com/groups/global/AllUsers", "READ"),
        }
        s3.put_bucket_acl(Bucket=name, ACL="private")
        assert len(s3.get_bucket_acl(Bucket=name)["Grants"]) == 1
        for bad in ("id=unquoted", 'id="no-such-user"', 'uri="http://example.com/group"'):
            with pytest.raises(ClientError) as caught:
                s3.put_bucket_acl(Bucket=name, GrantRead=bad)
            assert error_of(caught.value) == (400, "InvalidArgument")
    finally:
        s3.delete_bucket(Bucket=name)


def test_unsupported_configuration_is_not_implemented_and_reads_as_unset(
    s3: Any, bucket: str
) -> None:
    with pytest.raises(ClientError) as caught:
        s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [{"ID": "r", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 1}}]
            },
        )
    assert error_of(caught.value) == (501, "NotImplemented")
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_policy(Bucket=bucket)
    assert error_of(caught.value) == (404, "NoSuchBucketPolicy")
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_cors(Bucket=bucket)
    assert error_of(caught.value) == (404, "NoSuchCORSConfiguration")
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert error_of(caught.value) == (404, "NoSuchLifecycleConfiguration")
    assert "LoggingEnabled" not in s3.get_bucket_logging(Bucket=bucket)


def test_anonymous_requests_are_refused(gateway: Gateway, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"secret")
    for method, path in (
        ("GET", "/"),
        ("GET", f"/{bucket}"),
        ("GET", f"/{bucket}/k"),
        ("PUT", f"/{bucket}/x"),
    ):
        status, headers, body = raw_request(
            gateway, method, path, body=b"" if method == "PUT" else None
        )
        assert status == 403
        root = ET.fromstring(body)
        assert root.findtext("Code") == "AccessDenied"
        assert root.findtext("RequestId") == headers["x-amz-request-id"]


def test_unknown_access_key(gateway: Gateway) -> None:
    stranger = User(
        "nobody", {"id": "0", "access_key": "SKNOSUCHKEY000000000", "secret_key": "x" * 40}
    )
    with pytest.raises(ClientError) as caught:
        s3_client(gateway.url, stranger).list_buckets()
    assert error_of(caught.value) == (403, "InvalidAccessKeyId")


def test_wrong_secret(gateway: Gateway, user: User) -> None:
    forged = User(
        user.name, {"id": user.id, "access_key": user.access_key, "secret_key": "wrong" * 8}
    )
    with pytest.raises(ClientError) as caught:
        s3_client(gateway.url, forged).list_buckets()
    assert error_of(caught.value) == (403, "SignatureDoesNotMatch")


def test_virtual_host_style(gateway: Gateway, user: User, s3: Any, bucket: str) -> None:
    """BUCKET.s3.test (the gateway runs with --domain s3.test) names the bucket."""
    s3.put_object(Bucket=bucket, Key="dir/key", Body=b"virtual")
    host = f"{bucket}.s3.test:{gateway.port}"
    request = AWSRequest(method="GET", url=f"http://{host}/dir/key")
    S3SigV4Auth(Credentials(user.access_key, user.secret_key), "s3", REGION).add_auth(request)
    headers = {k: v for k, v in request.headers.items()}
    headers["Host"] = host
    status, _, body = raw_request(gateway, "GET", "/dir/key", headers)
    assert (status, body) == (200, b"virtual")
    # A listing of the bucket: the root of the virtual host.
    request = AWSRequest(method="GET", url=f"http://{host}/?list-type=2")
    S3SigV4Auth(Credentials(user.access_key, user.secret_key), "s3", REGION).add_auth(request)
    headers = {k: v for k, v in request.headers.items()}
    headers["Host"] = host
    status, _, body = raw_request(gateway, "GET", "/?list-type=2", headers)
    assert status == 200 and b"<Key>dir/key</Key>" in body


def test_bucket_tagging(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_tagging(Bucket=bucket)
    assert error_of(caught.value) == (404, "NoSuchTagSet")
    s3.put_bucket_tagging(
        Bucket=bucket,
        Tagging={"TagSet": [{"Key": "team", "Value": "storage"}, {"Key": "env", "Value": ""}]},
    )
    tags = s3.get_bucket_tagging(Bucket=bucket)["TagSet"]
    assert tags == [{"Key": "env", "Value": ""}, {"Key": "team", "Value": "storage"}]
    s3.delete_bucket_tagging(Bucket=bucket)
    with pytest.raises(ClientError) as caught:
        s3.get_bucket_tagging(Bucket=bucket)
    assert error_of(caught.value) == (404, "NoSuchTagSet")
