"""Who a canned ACL lets do what (``acl.allows``), and the grant lists it is shown as."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from store.gateways.s3 import acl
from store.gateways.s3.acl import ANONYMOUS_ID, READ, READ_ACP, WRITE, WRITE_ACP

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
