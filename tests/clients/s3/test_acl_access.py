"""Canned ACLs decide who may do what: another user and unsigned requests get nothing
from private buckets and objects, what public-read, public-read-write and
authenticated-read grant, and an object's bucket owner what bucket-owner-read and
bucket-owner-full-control give; a bucket's configuration stays its owner's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients.s3.conftest import (
    Gateway,
    User,
    empty_and_delete,
    failure,
    raw_request,
)
from tests.clients.s3.test_post_object import post


@pytest.fixture
def make_bucket(alice: Any) -> Iterator[Any]:
    made: list[str] = []

    def make(acl: str) -> str:
        name = f"acl-{uuid.uuid4().hex[:16]}"
        alice.create_bucket(Bucket=name, ACL=acl)
        made.append(name)
        return name

    yield make
    for name in made:
        empty_and_delete(alice, name)


def denied(call: Any, **params: Any) -> bool:
    return failure(call, **params)[0] == 403


def test_private_bucket_is_the_owners_alone(
    alice: Any, bob: Any, nobody: Any, make_bucket: Any
) -> None:
    bucket = make_bucket("private")
    alice.put_object(Bucket=bucket, Key="k", Body=b"secret", ACL="private")
    for client in (bob, nobody):
        assert denied(client.list_objects_v2, Bucket=bucket)
        assert denied(client.get_object, Bucket=bucket, Key="k")
        assert denied(client.get_object, Bucket=bucket, Key="missing")  # not 404
        assert denied(client.put_object, Bucket=bucket, Key="new", Body=b"x")
        assert denied(client.delete_object, Bucket=bucket, Key="k")
        assert denied(client.get_bucket_acl, Bucket=bucket)
        assert denied(client.head_bucket, Bucket=bucket)
    assert denied(nobody.list_buckets)
    assert denied(nobody.create_bucket, Bucket=f"anon-{uuid.uuid4().hex[:12]}")
    assert failure(nobody.list_objects_v2, Bucket=f"none-{uuid.uuid4().hex[:12]}") == (
        404,
        "NoSuchBucket",
    )
    assert alice.get_object(Bucket=bucket, Key="k")["Body"].read() == b"secret"


def test_public_read(alice: Any, bob: Any, nobody: Any, make_bucket: Any, gateway: Gateway) -> None:
    bucket = make_bucket("public-read")
    alice.put_object(Bucket=bucket, Key="open", Body=b"for all", ACL="public-read")
    alice.put_object(Bucket=bucket, Key="closed", Body=b"mine")
    for client in (bob, nobody):
        listed = client.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == ["closed", "open"]
        assert client.get_object(Bucket=bucket, Key="open")["Body"].read() == b"for all"
        assert denied(client.get_object, Bucket=bucket, Key="closed")
        # It may list: so 404.
        assert failure(client.get_object, Bucket=bucket, Key="missing") == (404, "NoSuchKey")
        assert denied(client.put_object, Bucket=bucket, Key="open", Body=b"mine now")
        assert denied(client.get_object_acl, Bucket=bucket, Key="open")
        assert denied(
            client.put_bucket_versioning,
            Bucket=bucket,
            VersioningConfiguration={"Status": "Enabled"},
        )
    status, _, body = raw_request(gateway, "GET", f"/{bucket}/open")  # as curl would
    assert (status, body) == (200, b"for all")
    assert alice.get_object(Bucket=bucket, Key="open")["Body"].read() == b"for all"


def test_public_read_write(alice: Any, bob: Any, nobody: Any, make_bucket: Any) -> None:
    bucket = make_bucket("public-read-write")
    alice.put_object(Bucket=bucket, Key="alices", Body=b"a")
    nobody.put_object(Bucket=bucket, Key="anonymous", Body=b"n")
    bob.put_object(Bucket=bucket, Key="bobs", Body=b"b")
    listed = alice.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"]
    assert {o["Key"]: o["Owner"]["DisplayName"] for o in listed} == {
        "alices": "alice",
        "anonymous": "anonymous",
        "bobs": "bob",
    }
    # Writing a bucket is adding and deleting its objects, not reading them.
    assert denied(alice.get_object, Bucket=bucket, Key="bobs")
    assert denied(bob.get_object, Bucket=bucket, Key="alices")
    bob.delete_object(Bucket=bucket, Key="alices")
    alice.delete_object(Bucket=bucket, Key="bobs")
    assert [o["Key"] for o in bob.list_objects_v2(Bucket=bucket)["Contents"]] == ["anonymous"]


def test_authenticated_read(bob: Any, nobody: Any, alice: Any, make_bucket: Any) -> None:
    bucket = make_bucket("authenticated-read")
    alice.put_object(Bucket=bucket, Key="k", Body=b"users only", ACL="authenticated-read")
    assert bob.get_object(Bucket=bucket, Key="k")["Body"].read() == b"users only"
    assert [o["Key"] for o in bob.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
    assert denied(nobody.get_object, Bucket=bucket, Key="k")
    assert denied(nobody.list_objects_v2, Bucket=bucket)


def test_bucket_owner_grants(alice: Any, bob: Any, make_bucket: Any, user: User) -> None:
    bucket = make_bucket("public-read-write")
    bob.put_object(Bucket=bucket, Key="read", Body=b"r", ACL="bucket-owner-read")
    bob.put_object(Bucket=bucket, Key="full", Body=b"f", ACL="bucket-owner-full-control")
    assert alice.get_object(Bucket=bucket, Key="read")["Body"].read() == b"r"
    assert denied(alice.get_object_acl, Bucket=bucket, Key="read")
    grants = alice.get_object_acl(Bucket=bucket, Key="full")["Grants"]
    assert {"ID": user.id, "Permission": "FULL_CONTROL"} in [
        {"ID": g["Grantee"].get("ID"), "Permission": g["Permission"]} for g in grants
    ]
    alice.put_object_acl(Bucket=bucket, Key="full", ACL="private")
    assert denied(alice.get_object, Bucket=bucket, Key="full")  # bob owns it: now his alone
    assert bob.get_object(Bucket=bucket, Key="full")["Body"].read() == b"f"


def test_copies_need_read_on_the_source(alice: Any, bob: Any, make_bucket: Any) -> None:
    shared = make_bucket("public-read")
    alice.put_object(Bucket=shared, Key="open", Body=b"copy me", ACL="public-read")
    alice.put_object(Bucket=shared, Key="closed", Body=b"not you")
    mine = f"bobs-{uuid.uuid4().hex[:12]}"
    bob.create_bucket(Bucket=mine)
    try:
        bob.copy_object(Bucket=mine, Key="copy", CopySource={"Bucket": shared, "Key": "open"})
        assert bob.get_object(Bucket=mine, Key="copy")["Body"].read() == b"copy me"
        assert denied(
            bob.copy_object, Bucket=mine, Key="x", CopySource={"Bucket": shared, "Key": "closed"}
        )
    finally:
        empty_and_delete(bob, mine)


def test_forms_without_a_policy_write_only_where_everyone_may(
    alice: Any, make_bucket: Any, gateway: Gateway
) -> None:
    open_bucket, closed_bucket = make_bucket("public-read-write"), make_bucket("private")
    for bucket, expected in ((open_bucket, 204), (closed_bucket, 403)):
        status, _, body = post(gateway, bucket, [("key", "form.txt")], b"posted")
        assert status == expected, body
    assert alice.list_objects_v2(Bucket=open_bucket)["Contents"][0]["Key"] == "form.txt"
    assert "Contents" not in alice.list_objects_v2(Bucket=closed_bucket)


def test_public_access_block(alice: Any, bob: Any, make_bucket: Any) -> None:
    bucket = make_bucket("public-read")
    alice.put_object(Bucket=bucket, Key="k", Body=b"x", ACL="public-read")
    assert bob.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
    assert failure(alice.get_public_access_block, Bucket=bucket) == (
        404,
        "NoSuchPublicAccessBlockConfiguration",
    )
    block = {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": False,
        "RestrictPublicBuckets": True,
    }
    alice.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=block)
    assert alice.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == block
    # Public ACLs grant nothing any more, and cannot be set.
    assert denied(bob.get_object, Bucket=bucket, Key="k")
    assert denied(bob.list_objects_v2, Bucket=bucket)
    assert denied(alice.put_object, Bucket=bucket, Key="p", Body=b"x", ACL="public-read")
    assert denied(alice.put_bucket_acl, Bucket=bucket, ACL="authenticated-read")
    assert denied(alice.put_object_acl, Bucket=bucket, Key="k", ACL="public-read-write")
    alice.put_object(Bucket=bucket, Key="private", Body=b"x", ACL="private")
    assert denied(bob.put_public_access_block, Bucket=bucket, PublicAccessBlockConfiguration={})
    alice.delete_public_access_block(Bucket=bucket)
    assert bob.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


def owner_and(grants: list[dict[str, Any]], owner: User) -> dict[str, Any]:
    """An AccessControlPolicy: the owner's FULL_CONTROL and ``grants``."""
    full = {"Grantee": {"ID": owner.id, "Type": "CanonicalUser"}, "Permission": "FULL_CONTROL"}
    return {"Owner": {"ID": owner.id}, "Grants": [full, *grants]}


def test_explicit_grants(
    alice: Any, bob: Any, nobody: Any, make_bucket: Any, user: User, other_user: User
) -> None:
    bucket = make_bucket("private")
    alice.put_object(Bucket=bucket, Key="k", Body=b"x")
    to_bob = {"Grantee": {"ID": other_user.id, "Type": "CanonicalUser"}, "Permission": "READ"}
    alice.put_bucket_acl(Bucket=bucket, AccessControlPolicy=owner_and([to_bob], user))
    grants = alice.get_bucket_acl(Bucket=bucket)["Grants"]
    assert {(g["Grantee"]["ID"], g["Grantee"]["DisplayName"], g["Permission"]) for g in grants} == {
        (user.id, "alice", "FULL_CONTROL"),
        (other_user.id, "bob", "READ"),
    }
    assert [o["Key"] for o in bob.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
    assert denied(bob.put_object, Bucket=bucket, Key="new", Body=b"x")
    assert denied(bob.get_object, Bucket=bucket, Key="k")  # the object's ACL is its own
    assert denied(nobody.list_objects_v2, Bucket=bucket)
    # Grant headers on an object: bob may read it and its ACL, not change it.
    alice.put_object_acl(
        Bucket=bucket,
        Key="k",
        GrantFullControl=f'id="{user.id}"',
        GrantRead=f'id="{other_user.id}"',
        GrantReadACP=f'id="{other_user.id}"',
    )
    assert bob.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
    assert len(bob.get_object_acl(Bucket=bucket, Key="k")["Grants"]) == 3
    assert denied(bob.put_object_acl, Bucket=bucket, Key="k", ACL="public-read")
    # A group grant is a canned ACL when it is one.
    everyone = {
        "Grantee": {"URI": "http://acs.amazonaws.com/groups/global/AllUsers", "Type": "Group"},
        "Permission": "READ",
    }
    alice.put_object_acl(Bucket=bucket, Key="k", AccessControlPolicy=owner_and([everyone], user))
    assert nobody.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
    for grant, code in (
        (
            {"Grantee": {"EmailAddress": "bob@example.com", "Type": "AmazonCustomerByEmail"}},
            "UnresolvableGrantByEmailAddress",
        ),
        ({"Grantee": {"ID": "0" * 64, "Type": "CanonicalUser"}}, "InvalidArgument"),
    ):
        policy = owner_and([{**grant, "Permission": "READ"}], user)
        assert failure(alice.put_bucket_acl, Bucket=bucket, AccessControlPolicy=policy) == (
            400,
            code,
        )


def test_an_owner_who_revokes_every_grant_keeps_the_acl(
    alice: Any, make_bucket: Any, user: User
) -> None:
    bucket = make_bucket("private")
    alice.put_bucket_acl(
        Bucket=bucket, AccessControlPolicy={"Owner": {"ID": user.id}, "Grants": []}
    )
    assert alice.get_bucket_acl(Bucket=bucket)["Grants"] == []
    assert denied(alice.list_objects_v2, Bucket=bucket)
    alice.put_bucket_acl(Bucket=bucket, ACL="private")
    assert "Contents" not in alice.list_objects_v2(Bucket=bucket)
