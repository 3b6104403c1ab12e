"""Who a canned ACL lets do what (``acl.allows``), and the grant lists it is shown as."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from store.gateways.s3 import acl, acl_requests
from store.gateways.s3.access import Grant
from store.gateways.s3.acl import ANONYMOUS_ID, READ, READ_ACP, WRITE, WRITE_ACP
from store.gateways.s3.errors import S3Error

OWNER, OTHER, BUCKET_OWNER = "o" * 64, "x" * 64, "b" * 64
EVERYTHING = (READ, WRITE, READ_ACP, WRITE_ACP)


@pytest.mark.parametrize(
    ("canned", "requester", "granted"),
    [
        ("private", OTHER, ()),
        ("private", ANONYMOUS_ID, ()),
        ("public-read", OTHER, (READ,)),
        ("public-read", ANONYMOUS_ID, (READ,)),
        ("public-read-write", ANONYMOUS_ID, (READ, WRITE)),
        ("authenticated-read", OTHER, (READ,)),
        ("authenticated-read", ANONYMOUS_ID, ()),
        ("bucket-owner-read", BUCKET_OWNER, (READ,)),
        ("bucket-owner-read", OTHER, ()),
        ("bucket-owner-full-control", BUCKET_OWNER, EVERYTHING),
        ("log-delivery-write", OTHER, ()),
        ("no-such-acl", OTHER, ()),
    ],
)
def test_grants(canned: str, requester: str, granted: tuple[str, ...]) -> None:
    for permission in EVERYTHING:
        allowed = acl.allows(canned, OWNER, requester, permission, BUCKET_OWNER)
        assert allowed == (permission in granted), permission
        assert acl.allows(canned, OWNER, OWNER, permission, BUCKET_OWNER)


def test_bucket_owner_grant_is_listed() -> None:
    document = acl.policy_document(OWNER, "o", "bucket-owner-read", (BUCKET_OWNER, "b"))
    root = ET.fromstring(document)
    grants = [
        (g.findtext("{*}Grantee/{*}ID"), g.findtext("{*}Permission"))
        for g in root.iter("{http://s3.amazonaws.com/doc/2006-03-01/}Grant")
    ]
    assert grants == [(OWNER, "FULL_CONTROL"), (BUCKET_OWNER, "READ")]


def test_custom_grants() -> None:
    grants = (
        Grant(OTHER, READ),
        Grant(acl.AUTHENTICATED_USERS, WRITE, group=True),
    )

    def allowed(requester: str, permission: str, ignore_public: bool = False) -> bool:
        return acl.allows(
            acl.CUSTOM, OWNER, requester, permission, grants=grants, ignore_public=ignore_public
        )

    assert allowed(OTHER, READ) and not allowed(OTHER, READ_ACP)
    assert allowed(BUCKET_OWNER, WRITE) and not allowed(ANONYMOUS_ID, WRITE)
    assert not allowed(BUCKET_OWNER, WRITE, ignore_public=True)
    # The owner keeps the ACL, and gets the rest only by a grant.
    assert allowed(OWNER, READ_ACP) and allowed(OWNER, WRITE_ACP) and not allowed(OWNER, READ)
    full = (Grant(OTHER, "FULL_CONTROL"),)
    assert all(acl.allows(acl.CUSTOM, OWNER, OTHER, p, grants=full) for p in EVERYTHING)
    assert acl.is_public(acl.CUSTOM, grants) and not acl.is_public(acl.CUSTOM, full)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ('id="abc"', [("id", "abc", READ)]),
        ("id=abc", [("id", "abc", READ)]),  # unquoted, as the AWS CLI's examples write it
        ("emailAddress=e@x, id=b", [("emailaddress", "e@x", READ), ("id", "b", READ)]),
        (
            'id="a", uri="http://x/y" ,emailAddress="e@x"',
            [("id", "a", READ), ("uri", "http://x/y", READ), ("emailaddress", "e@x", READ)],
        ),
    ],
)
def test_grant_headers(value: str, parsed: list[tuple[str, str, str]]) -> None:
    assert acl_requests._header_grants([("x-amz-grant-read", value)]) == parsed


@pytest.mark.parametrize("value", ['id="a" uri="b"', 'who="x"', 'id="a",,', 'id=a"b', "id="])
def test_malformed_grant_headers(value: str) -> None:
    with pytest.raises(S3Error) as caught:
        acl_requests._header_grants([("x-amz-grant-write", value)])
    assert caught.value.code == "InvalidArgument"
