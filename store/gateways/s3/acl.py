"""Canned ACLs: stored with each bucket and object, reported as grant lists, and enforced.

S3 clients routinely send ``x-amz-acl`` (``private``, ``public-read`` ...). The gateway
records the canned ACL of each bucket and object, renders it as the grant list S3
documents for it, and grants what it says: the owner has FULL_CONTROL; ``public-read``
lets anyone, signed or not, READ (list a bucket, read an object); ``public-read-write``
lets anyone WRITE a bucket too (add and delete its objects); ``authenticated-read`` lets
every user of the gateway READ; ``bucket-owner-read`` and ``bucket-owner-full-control``
give an object's bucket owner READ or FULL_CONTROL. A bucket's configuration is its
owner's alone.

An ACL that is not a canned one (``x-amz-grant-*`` headers, or an AccessControlPolicy
document) is kept as its list of grants, under the name ``custom`` (see
:mod:`acl_requests`). As in S3, its owner keeps READ_ACP and WRITE_ACP whatever it says,
and gets the rest only by a grant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from store.gateways.s3 import errors, xmldoc
from store.gateways.s3.access import Grant, PublicAccessBlock
from store.gateways.s3.layout import User

if TYPE_CHECKING:
    pass

READ, WRITE, READ_ACP, WRITE_ACP = "READ", "WRITE", "READ_ACP", "WRITE_ACP"
FULL_CONTROL = "FULL_CONTROL"
# The canonical id S3 gives requests that carry no credentials.
ANONYMOUS_ID = "65a011a29cdf8ec533ec3d1ccaae921c"
ANONYMOUS_USER = User("anonymous", ANONYMOUS_ID, 0.0)

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTHENTICATED_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
LOG_DELIVERY = "http://acs.amazonaws.com/groups/s3/LogDelivery"
XSI = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'

# Canned ACL -> the grants beyond the owner's FULL_CONTROL: (group URI, permission).
CANNED: dict[str, tuple[tuple[str, str], ...]] = {
    "private": (),
    "public-read": ((ALL_USERS, "READ"),),
    "public-read-write": ((ALL_USERS, "READ"), (ALL_USERS, "WRITE")),
    "authenticated-read": ((AUTHENTICATED_USERS, "READ"),),
    "aws-exec-read": (),
    "bucket-owner-read": (),
    "bucket-owner-full-control": (),
    "log-delivery-write": ((LOG_DELIVERY, "WRITE"), (LOG_DELIVERY, "READ_ACP")),
}
OBJECT_CANNED = frozenset(CANNED) - {"log-delivery-write"}
GRANT_HEADERS = (
    "x-amz-grant-read",
    "x-amz-grant-write",
    "x-amz-grant-read-acp",
    "x-amz-grant-write-acp",
    "x-amz-grant-full-control",
)


PUBLIC = frozenset({"public-read", "public-read-write", "authenticated-read"})
CUSTOM = "custom"
PERMISSIONS = (READ, WRITE, READ_ACP, WRITE_ACP, FULL_CONTROL)


def allows(
    canned: str,
    owner_id: str,
    requester_id: str,
    permission: str,
    bucket_owner_id: str | None = None,
    *,
    ignore_public: bool = False,
    grants: Sequence[Grant] = (),
) -> bool:
    """Whether a resource (bucket or object) with this canned ACL and owner grants
    ``permission`` to the requester (``ANONYMOUS_ID`` for an unsigned request).
    ``bucket_owner_id`` is the owner of an object's bucket; with ``ignore_public`` (a
    bucket's IgnorePublicAcls) the groups' grants count for nothing. ``grants`` are those
    of a custom ACL."""
    if canned == CUSTOM:
        return _grants_allow(grants, owner_id, requester_id, permission, ignore_public)
    if requester_id == owner_id:
        return True
    if requester_id == bucket_owner_id:
        if canned == "bucket-owner-full-control":
            return True
        if canned == "bucket-owner-read" and permission == READ:
            return True
    if ignore_public:
        return False
    anonymous = requester_id == ANONYMOUS_ID
    for group, granted in CANNED.get(canned, ()):
        if granted != permission:
            continue
        if group == ALL_USERS or (group == AUTHENTICATED_USERS and not anonymous):
            return True
    return False


def _grants_allow(
    grants: Sequence[Grant],
    owner_id: str,
    requester_id: str,
    permission: str,
    ignore_public: bool,
) -> bool:
    if requester_id == owner_id and permission in (READ_ACP, WRITE_ACP):
        return True
    anonymous = requester_id == ANONYMOUS_ID
    for grant in grants:
        if grant.permission not in (permission, FULL_CONTROL):
            continue
        if not grant.group:
            if grant.grantee == requester_id:
                return True
        elif not ignore_public and (
            grant.grantee == ALL_USERS or (grant.grantee == AUTHENTICATED_USERS and not anonymous)
        ):
            return True
    return False


def is_public(canned: str, grants: Sequence[Grant] = ()) -> bool:
    return canned in PUBLIC or any(
        g.group and g.grantee in (ALL_USERS, AUTHENTICATED_USERS) for g in grants
    )


def check_not_blocked(
    block: PublicAccessBlock | None, canned: str, grants: Sequence[Grant] = ()
) -> None:
    """Refuse to set a public ACL where the bucket's BlockPublicAcls forbids it."""
    if block is not None and block.block_public_acls and is_public(canned, grants):
        raise errors.access_denied()


def canned_from_headers(headers: Sequence[tuple[str, str]], *, bucket: bool) -> str:
    value = None
    for name, raw in headers:
        if name == "x-amz-acl":
            value = raw.strip()
    if value is None:
        return "private"
    allowed = CANNED if bucket else OBJECT_CANNED
    if value not in allowed:
        raise errors.invalid_argument("", "x-amz-acl", value)
    return value


def policy_document(
    owner_id: str,
    owner_name: str,
    canned: str,
    bucket_owner: tuple[str, str] | None = None,
    grants: Sequence[Grant] = (),
) -> bytes:
    """The AccessControlPolicy of an ACL; ``bucket_owner`` (id, name) is the owner of an
    object's bucket, granted READ or FULL_CONTROL by the bucket-owner-* ACLs."""
    doc = xmldoc.Doc("AccessControlPolicy")
    doc.owner("Owner", owner_id, owner_name)
    doc.open("AccessControlList")
    if canned == CUSTOM:
        for grant in grants:
            if grant.group:
                doc.open("Grant").open("Grantee", f'{XSI} xsi:type="Group"')
                doc.leaf("URI", grant.grantee).close().leaf("Permission", grant.permission)
                doc.close()
            else:
                _user_grant(doc, grant.grantee, grant.name, grant.permission)
        return doc.to_bytes()
    # The groups' grants come first, as RGW lists them (S3 specifies no order).
    for uri, permission in CANNED.get(canned, ()):
        doc.open("Grant").open("Grantee", f'{XSI} xsi:type="Group"').leaf("URI", uri).close()
        doc.leaf("Permission", permission).close()
    _user_grant(doc, owner_id, owner_name, FULL_CONTROL)
    extra = {"bucket-owner-read": READ, "bucket-owner-full-control": FULL_CONTROL}
    if bucket_owner is not None and canned in extra and bucket_owner[0] != owner_id:
        _user_grant(doc, bucket_owner[0], bucket_owner[1], extra[canned])
    return doc.to_bytes()


def _user_grant(doc: xmldoc.Doc, user_id: str, name: str, permission: str) -> None:
    doc.open("Grant").open("Grantee", f'{XSI} xsi:type="CanonicalUser"')
    doc.leaf("ID", user_id).leaf("DisplayName", name).close()
    doc.leaf("Permission", permission).close()
