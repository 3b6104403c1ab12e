"""Bucket policies with boto3: kept and returned as sent, checked when put, and enforced
before the ACLs — an Allow opens what the ACLs keep closed, an explicit Deny closes what
they open (to the owner too, who always keeps the policy itself), conditions look at the
request, and public access blocks refuse or restrict public policies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients.s3.conftest import User, empty_and_delete, failure


@pytest.fixture
def bucket(alice: Any) -> Iterator[str]:
    name = f"pol-{uuid.uuid4().hex[:16]}"
    alice.create_bucket(Bucket=name)
    yield name
    empty_and_delete(alice, name)


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(action: str | list[str], resource: str | list[str], **more: Any) -> dict[str, Any]:
    base = {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": action, "Resource": resource}
    return base | more


def test_put_get_delete(alice: Any, bob: Any, bucket: str) -> None:
    assert failure(alice.get_bucket_policy, Bucket=bucket) == (404, "NoSuchBucketPolicy")
    text = policy(allow("s3:ListBucket", f"arn:aws:s3:::{bucket}"))
    alice.put_bucket_policy(Bucket=bucket, Policy=text)
    assert alice.get_bucket_policy(Bucket=bucket)["Policy"] == text  # as sent
    # Others may neither read nor change it.
    assert failure(bob.get_bucket_policy, Bucket=bucket)[0] == 403
    assert failure(bob.put_bucket_policy, Bucket=bucket, Policy=text)[0] == 403
    assert failure(bob.delete_bucket_policy, Bucket=bucket)[0] == 403
    alice.delete_bucket_policy(Bucket=bucket)
    assert failure(alice.get_bucket_policy, Bucket=bucket) == (404, "NoSuchBucketPolicy")
    alice.delete_bucket_policy(Bucket=bucket)  # deleting none is fine


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"Statement": [{"Effect": "Allow", "Action": "s3:GetObject"}]}),
        policy(allow("s3:GetObject", "arn:aws:s3:::somebody-elses-bucket/*")),
        policy(allow("s3:GetObject", "*") | {"Condition": {"Sometimes": {"s3:prefix": "a"}}}),
    ],
)
def test_malformed_policies(alice: Any, bucket: str, text: str) -> None:
    assert failure(alice.put_bucket_policy, Bucket=bucket, Policy=text) == (400, "MalformedPolicy")
    assert failure(alice.get_bucket_policy, Bucket=bucket) == (404, "NoSuchBucketPolicy")


def test_allow_opens_a_private_bucket(alice: Any, bob: Any, nobody: Any, bucket: str) -> None:
    alice.put_object(Bucket=bucket, Key="pub/a", Body=b"public a")
    alice.put_object(Bucket=bucket, Key="private/b", Body=b"private b")
    for client in (bob, nobody):
        assert failure(client.get_object, Bucket=bucket, Key="pub/a")[0] == 403
    alice.put_bucket_policy(
        Bucket=bucket, Policy=policy(allow("s3:GetObject", f"arn:aws:s3:::{bucket}/pub/*"))
    )
    for client in (bob, nobody):
        assert client.get_object(Bucket=bucket, Key="pub/a")["Body"].read() == b"public a"
        assert failure(client.get_object, Bucket=bucket, Key="private/b")[0] == 403
        assert failure(client.list_objects_v2, Bucket=bucket)[0] == 403
        # Without ListBucket a missing key is 403, not 404.
        assert failure(client.get_object, Bucket=bucket, Key="pub/missing")[0] == 403
        assert failure(client.put_object, Bucket=bucket, Key="pub/x", Body=b"x")[0] == 403
    # The owner still has everything.
    assert alice.get_object(Bucket=bucket, Key="private/b")["Body"].read() == b"private b"


def test_listing_by_prefix_and_missing_keys(alice: Any, bob: Any, bucket: str) -> None:
    alice.put_object(Bucket=bucket, Key="public/x", Body=b"x")
    condition = {"StringLike": {"s3:prefix": "public/*"}}
    alice.put_bucket_policy(
        Bucket=bucket,
        Policy=policy(allow("s3:ListBucket", f"arn:aws:s3:::{bucket}", Condition=condition)),
    )
    listed = bob.list_objects_v2(Bucket=bucket, Prefix="public/")
    assert [o["Key"] for o in listed["Contents"]] == ["public/x"]
    assert failure(bob.list_objects_v2, Bucket=bucket, Prefix="private/")[0] == 403
    assert failure(bob.list_objects_v2, Bucket=bucket)[0] == 403
    # A missing key under the listable prefix is 404; elsewhere 403.
    assert failure(bob.head_object, Bucket=bucket, Key="public/none")[0] == 404
    assert failure(bob.head_object, Bucket=bucket, Key="private/none")[0] == 403


def test_deny_wins_over_acls_and_the_owner(alice: Any, bob: Any, bucket: str) -> None:
    alice.put_bucket_acl(Bucket=bucket, ACL="public-read")
    alice.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert bob.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
    deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": ["s3:ListBucket", "s3:GetBucketTagging", "s3:*Policy"],
        "Resource": f"arn:aws:s3:::{bucket}",
    }
    alice.put_bucket_policy(Bucket=bucket, Policy=policy(deny))
    assert failure(bob.list_objects_v2, Bucket=bucket)[0] == 403
    assert failure(alice.list_objects_v2, Bucket=bucket)[0] == 403
    assert failure(alice.get_bucket_tagging, Bucket=bucket)[0] == 403
    # The owner keeps the policy itself, so a deny can always be taken back.
    assert json.loads(alice.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(policy(deny))
    alice.delete_bucket_policy(Bucket=bucket)
    assert alice.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_conditions_on_the_request(alice: Any, bob: Any, bucket: str, user: User) -> None:
    objects = f"arn:aws:s3:::{bucket}/*"
    no_public_acls = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": objects,
        "Condition": {"StringLike": {"s3:x-amz-acl": "public*"}},
    }
    tagged = allow("s3:GetObject", objects)
    tagged["Condition"] = {"StringEquals": {"s3:ExistingObjectTag/security": "public"}}
    alice.put_bucket_policy(
        Bucket=bucket, Policy=policy(allow("s3:PutObject", objects), no_public_acls, tagged)
    )
    bob.put_object(Bucket=bucket, Key="private-key", Body=b"p")
    assert failure(bob.put_object, Bucket=bucket, Key="k", Body=b"x", ACL="public-read")[0] == 403
    # bob's own object is his by its ACL; alice's are readable only when tagged public.
    assert bob.get_object(Bucket=bucket, Key="private-key")["Body"].read() == b"p"
    alice.put_object(Bucket=bucket, Key="open", Body=b"o", Tagging="security=public")
    alice.put_object(Bucket=bucket, Key="shut", Body=b"s", Tagging="security=private")
    assert bob.get_object(Bucket=bucket, Key="open")["Body"].read() == b"o"
    assert failure(bob.get_object, Bucket=bucket, Key="shut")[0] == 403


def test_delete_objects_key_by_key(alice: Any, bob: Any, bucket: str) -> None:
    for key in ("tmp/a", "keep/b"):
        alice.put_object(Bucket=bucket, Key=key, Body=b"x")
    alice.put_bucket_policy(
        Bucket=bucket, Policy=policy(allow("s3:DeleteObject", f"arn:aws:s3:::{bucket}/tmp/*"))
    )
    result = bob.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "tmp/a"}, {"Key": "keep/b"}]}
    )
    assert [d["Key"] for d in result["Deleted"]] == ["tmp/a"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("keep/b", "AccessDenied")]
    keys = [o["Key"] for o in alice.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["keep/b"]


def test_copy_source_condition(alice: Any, bob: Any, bucket: str) -> None:
    source = f"pol-src-{uuid.uuid4().hex[:12]}"
    alice.create_bucket(Bucket=source)
    try:
        alice.put_object(Bucket=source, Key="public/a", Body=b"copy me")
        alice.put_object(Bucket=source, Key="private/b", Body=b"not me")
        alice.put_bucket_policy(
            Bucket=source, Policy=policy(allow("s3:GetObject", f"arn:aws:s3:::{source}/*"))
        )
        put = allow("s3:PutObject", f"arn:aws:s3:::{bucket}/*")
        put["Condition"] = {"StringLike": {"s3:x-amz-copy-source": f"{source}/public/*"}}
        alice.put_bucket_policy(Bucket=bucket, Policy=policy(put))
        bob.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": source, "Key": "public/a"})
        assert bob.get_object(Bucket=bucket, Key="c")["Body"].read() == b"copy me"
        denied = failure(
            bob.copy_object,
            Bucket=bucket,
            Key="d",
            CopySource={"Bucket": source, "Key": "private/b"},
        )
        assert denied[0] == 403
        assert failure(bob.put_object, Bucket=bucket, Key="e", Body=b"plain")[0] == 403
    finally:
        empty_and_delete(alice, source)


def test_policy_status_and_public_access_blocks(alice: Any, nobody: Any, bucket: str) -> None:
    assert alice.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is False
    alice.put_object(Bucket=bucket, Key="k", Body=b"v")
    public = policy(allow("s3:GetObject", f"arn:aws:s3:::{bucket}/*"))
    pinned = allow("s3:GetObject", f"arn:aws:s3:::{bucket}/*")
    pinned["Condition"] = {"IpAddress": {"aws:SourceIp": "10.0.0.0/32"}}
    alice.put_bucket_policy(Bucket=bucket, Policy=policy(pinned))
    assert alice.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is False
    assert failure(nobody.get_object, Bucket=bucket, Key="k")[0] == 403  # not from 10.0.0.0
    alice.put_bucket_policy(Bucket=bucket, Policy=public)
    assert alice.get_bucket_policy_status(Bucket=bucket)["PolicyStatus"]["IsPublic"] is True
    assert nobody.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    flags = {
        "BlockPublicAcls": False,
        "IgnorePublicAcls": False,
        "BlockPublicPolicy": False,
        "RestrictPublicBuckets": True,
    }
    alice.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=flags)
    assert failure(nobody.get_object, Bucket=bucket, Key="k")[0] == 403
    assert alice.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    flags |= {"BlockPublicPolicy": True, "RestrictPublicBuckets": False}
    alice.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=flags)
    assert failure(alice.put_bucket_policy, Bucket=bucket, Policy=public)[0] == 403
    alice.put_bucket_policy(Bucket=bucket, Policy=policy(pinned))  # not public: allowed


def test_a_new_bucket_of_the_same_name_has_no_policy(alice: Any) -> None:
    name = f"pol-{uuid.uuid4().hex[:16]}"
    alice.create_bucket(Bucket=name)
    alice.put_bucket_policy(
        Bucket=name, Policy=policy(allow("s3:GetObject", f"arn:aws:s3:::{name}/*"))
    )
    alice.delete_bucket(Bucket=name)
    alice.create_bucket(Bucket=name)
    try:
        assert failure(alice.get_bucket_policy, Bucket=name) == (404, "NoSuchBucketPolicy")
    finally:
        empty_and_delete(alice, name)
