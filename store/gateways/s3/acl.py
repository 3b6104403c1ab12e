"""Canned ACLs: accepted, stored and reported; access itself is always the owner's.

S3 clients routinely send ``x-amz-acl`` (``private``, ``public-read`` ...). The gateway
records the canned ACL of each bucket and object and renders it as the grant list S3
documents for it, so GetBucketAcl/GetObjectAcl tell the truth about what was asked. It
does not grant anyone else access: every request must be signed by the owner (the issue of
anonymous or cross-user access is an explicit non-feature, see docs/s3.md). Explicit grant
headers and ACL documents that are not one of the canned forms are NotImplemented.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TYPE_CHECKING

from store.gateways.s3 import errors, xmldoc

if TYPE_CHECKING:
    from store.gateways.s3.gateway import Call

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


def policy_document(owner_id: str, owner_name: str, canned: str) -> bytes:
    doc = xmldoc.Doc("AccessControlPolicy")
    doc.owner("Owner", owner_id, owner_name)
    doc.open("AccessControlList")
    # The groups' grants come first, as RGW lists them (S3 specifies no order).
    for uri, permission in CANNED.get(canned, ()):
        doc.open("Grant").open("Grantee", f'{XSI} xsi:type="Group"').leaf("URI", uri).close()
        doc.leaf("Permission", permission).close()
    doc.open("Grant").open("Grantee", f'{XSI} xsi:type="CanonicalUser"')
    doc.leaf("ID", owner_id).leaf("DisplayName", owner_name).close()
    doc.leaf("Permission", "FULL_CONTROL").close()
    return doc.to_bytes()


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
