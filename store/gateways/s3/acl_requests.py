"""The ACL a request asks for: ``x-amz-acl``, ``x-amz-grant-*`` headers or an
AccessControlPolicy document.

Grants name users by canonical id (they must exist: an unknown id is InvalidArgument, an
e-mail address is UnresolvableGrantByEmailAddress, as users here have none) and groups by
URI. A set of grants that is exactly a canned ACL is kept as that canned ACL; any other
becomes a ``custom`` ACL with its grants (see :mod:`acl`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from store.gateways.s3 import errors, xmldoc
from store.gateways.s3.access import Grant
from store.gateways.s3.acl import (
    ALL_USERS,
    AUTHENTICATED_USERS,
    CANNED,
    CUSTOM,
    FULL_CONTROL,
    GRANT_HEADERS,
    LOG_DELIVERY,
    PERMISSIONS,
    READ,
    READ_ACP,
    WRITE,
    WRITE_ACP,
    canned_from_headers,
)

if TYPE_CHECKING:
    from store.gateways.s3.gateway import Call

HEADER_PERMISSIONS = dict(
    zip(GRANT_HEADERS, (READ, WRITE, READ_ACP, WRITE_ACP, FULL_CONTROL), strict=True)
)
GROUPS = (ALL_USERS, AUTHENTICATED_USERS, LOG_DELIVERY)
# ``id="..."`` as S3 documents it; the quotes are often left out, and S3 takes that too.
_GRANTEE = re.compile(
    r'\s*(id|uri|emailAddress)\s*=\s*(?:"([^"]*)"|([^",\s]+))\s*(?:,|$)', re.IGNORECASE
)

# (kind, value, permission) with kind "id", "uri" or "emailaddress", before resolving
RawGrant = tuple[str, str, str]


@dataclass(frozen=True)
class RequestedAcl:
    canned: str
    grants: tuple[Grant, ...] = ()


def _header_grants(headers: Sequence[tuple[str, str]]) -> list[RawGrant]:
    raw: list[RawGrant] = []
    for name, value in headers:
        permission = HEADER_PERMISSIONS.get(name)
        if permission is None:
            continue
        position = 0
        while position < len(value):
            match = _GRANTEE.match(value, position)
            if match is None or match.end() == position:
                raise errors.invalid_argument("Invalid grant header", name, value)
            grantee = match.group(2) if match.group(2) is not None else match.group(3)
            raw.append((match.group(1).lower(), grantee, permission))
            position = match.end()
    return raw


def _document_grants(root: ET.Element) -> list[RawGrant]:
    raw: list[RawGrant] = []
    for acl_list in xmldoc.children(root, "AccessControlList"):
        for grant in xmldoc.children(acl_list, "Grant"):
            permission = xmldoc.child_text(grant, "Permission") or ""
            grantee = next(xmldoc.children(grant, "Grantee"), None)
            if grantee is None or permission not in PERMISSIONS:
                raise errors.malformed_acl()
            for kind, field in (("id", "ID"), ("uri", "URI"), ("emailaddress", "EmailAddress")):
                value = xmldoc.child_text(grantee, field)
                if value is not None:
                    raw.append((kind, value.strip(), permission))
                    break
            else:
                raise errors.malformed_acl()
    return raw


async def _resolve(call: Call, raw: list[RawGrant], owner_id: str) -> RequestedAcl:
    names: dict[str, str] | None = None
    grants: list[Grant] = []
    for kind, value, permission in raw:
        if kind == "emailaddress":
            raise errors.S3Error(
                "UnresolvableGrantByEmailAddress",
                400,
                "The e-mail address you provided does not match any account on record.",
                {"EmailAddress": value},
            )
        if kind == "uri":
            if value not in GROUPS:
                raise errors.invalid_argument("Invalid group uri", "uri", value)
            grants.append(Grant(value, permission, group=True))
            continue
        if names is None:
            names = {user.id: user.name for user, _ in await call.gateway.users.all()}
        if value not in names:
            raise errors.invalid_argument("Invalid id", "CanonicalUser/ID", value)
        grants.append(Grant(value, permission, name=names[value]))
    found = {
        (g.grantee if g.group else ("owner" if g.grantee == owner_id else g.grantee), g.permission)
        for g in grants
    }
    for canned, extra in CANNED.items():
        if found == {("owner", FULL_CONTROL), *extra}:
            return RequestedAcl(canned)
    return RequestedAcl(CUSTOM, tuple(dict.fromkeys(grants)))


async def from_headers(call: Call, owner_id: str, *, bucket: bool) -> RequestedAcl:
    """The ACL a write (PutObject, CopyObject, CreateMultipartUpload, CreateBucket)
    gives what it creates, owned by ``owner_id``."""
    raw = _header_grants(call.headers)
    if not raw:
        return RequestedAcl(canned_from_headers(call.headers, bucket=bucket))
    if call.header("x-amz-acl") is not None:
        raise errors.invalid_request("Specifying both Canned ACLs and Header Grants is not allowed")
    return await _resolve(call, raw, owner_id)


async def for_put(call: Call, owner_id: str, *, bucket: bool) -> RequestedAcl:
    """The ACL a PutBucketAcl/PutObjectAcl asks for (headers or document)."""
    body = await call.small_body()
    if body.strip():
        if call.header("x-amz-acl") is not None or _header_grants(call.headers):
            raise errors.S3Error("UnexpectedContent", 400, "This request does not support content")
        root = xmldoc.parse(body, "AccessControlPolicy")
        return await _resolve(call, _document_grants(root), owner_id)
    if call.header("x-amz-acl") is None and not _header_grants(call.headers):
        raise errors.S3Error(
            "MissingSecurityHeader",
            400,
            "Your request was missing a required header",
            {"MissingHeaderName": "x-amz-acl"},
        )
    return await from_headers(call, owner_id, bucket=bucket)
