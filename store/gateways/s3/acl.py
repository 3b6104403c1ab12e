"""Canned ACLs: stored with each bucket and object, reported as grant lists, and enforced.

S3 clients routinely send ``x-amz-acl`` (``private``, ``public-read`` ...). The gateway
records the canned ACL of each bucket and object, renders it as the grant list S3
documents for it, and grants what it says: the owner has FULL_CONTROL; ``public-read``
lets anyone, signed or not, READ (list a bucket, read an object); ``public-read-write``
lets anyone WRITE a bucket too (add and delete its objects); ``authenticated-read`` lets
every user of the gateway READ; ``bucket-owner-read`` and ``bucket-owner-full-control``
give an object's bucket owner READ or FULL_CONTROL. A bucket's configuration is its
owner's alone. Explicit grant headers and ACL documents that are not one of the canned
forms are NotImplemented.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

from store.gateways.s3 import errors, xmldoc
from store.gateways.s3.layout import PublicAccessBlock, User

if TYPE_CHECKING:
    from store.gateways.s3.gateway import Call

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


def allows(
    canned: str,
    owner_id: str,
    requester_id: str,
    permission: str,
    bucket_owner_id: str | None = None,
    *,
    ignore_public: bool = False,
) -> bool:
    """Whether a resource (bucket or object) with this canned ACL and owner grants
    ``permission`` to the requester (``ANONYMOUS_ID`` for an unsigned request).
    ``bucket_owner_id`` is the owner of an object's bucket; with ``ignore_public`` (a
    bucket's IgnorePublicAcls) the groups' grants count for nothing."""
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


def check_not_blocked(block: PublicAccessBlock | None, canned: str) -> None:
    """Refuse to set a public ACL where the bucket's BlockPublicAcls forbids it."""
    if block is not None and block.block_public_acls and canned in PUBLIC:
        raise errors.access_denied()


def canned_from_headers(headers: Sequence[tuple[str, str]], *, bucket: bool) -> str:
    value = None
    for name, raw in headers:
        if name in GRANT_HEADERS:
            raise errors.not_implemented(name)
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
) -> bytes:
    """The AccessControlPolicy of a canned ACL; ``bucket_owner`` (id, name) is the owner
    of an object's bucket, granted READ or FULL_CONTROL by the bucket-owner-* ACLs."""
    doc = xmldoc.Doc("AccessControlPolicy")
    doc.owner("Owner", owner_id, owner_name)
    doc.open("AccessControlList")
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


def _grants_of(root: ET.Element, owner_id: str) -> set[tuple[str, str]] | None:
    """The grants of an AccessControlPolicy as (who, permission); None if any is not
    expressible as a canned ACL of this owner."""
    grants: set[tuple[str, str]] = set()
    for acl_list in xmldoc.children(root, "AccessControlList"):
        for grant in xmldoc.children(acl_list, "Grant"):
            permission = xmldoc.child_text(grant, "Permission") or ""
            grantee = next(xmldoc.children(grant, "Grantee"), None)
            if grantee is None:
                return None
            uri = xmldoc.child_text(grantee, "URI")
            user_id = xmldoc.child_text(grantee, "ID")
            if uri is not None:
                grants.add((uri, permission))
            elif user_id == owner_id:
                grants.add(("owner", permission))
            else:
                return None
    return grants


async def canned_for_put(call: Call, owner_id: str, *, bucket: bool = True) -> str:
    """The canned ACL a PutBucketAcl/PutObjectAcl asks for (header or document)."""
    body = await call.payload().read_all(64 * 1024)
    if not body.strip():
        if call.header("x-amz-acl") is None and not any(
            name in GRANT_HEADERS for name, _ in call.headers
        ):
            raise errors.S3Error(
                "MissingSecurityHeader",
                400,
                "Your request was missing a required header",
                {"MissingHeaderName": "x-amz-acl"},
            )
        return canned_from_headers(call.headers, bucket=bucket)
    if call.header("x-amz-acl") is not None:
        raise errors.S3Error("UnexpectedContent", 400, "This request does not support content")
    root = xmldoc.parse(body, "AccessControlPolicy")
    grants = _grants_of(root, owner_id)
    if grants is not None:
        for name, extra in CANNED.items():
            if grants == {("owner", "FULL_CONTROL"), *extra}:
                return name
    raise errors.not_implemented("AccessControlPolicy")
