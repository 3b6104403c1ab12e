"""POST Object: an upload from an HTML form, signed by a policy instead of a header.

The form's fields come first: they are read, the policy's signature is checked against
the signing user's secret, and the policy's conditions against the fields. The fields then
become the headers of an ordinary PutObject (``acl`` is ``x-amz-acl``, ``tagging`` the
tag set, ``Content-Type``, ``x-amz-meta-*`` ... keep their names) whose body is the file,
streamed and held to the policy's ``content-length-range``. A form without a policy is
an anonymous request: it may write only where the bucket's ACL lets everyone write.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import cast
from urllib.parse import urlencode, urlsplit

from store.gateways.s3 import acl, errors, form, ops_objects, post_policy, routing, xmldoc
from store.gateways.s3.gateway import Call, Gateway
from store.gateways.s3.ops_object_meta import parse_tag_set
from store.gateways.s3.responses import empty, xml
from store.gateways.s3.routing import Route
from store.gateways.web.connection import BodyReader
from store.gateways.web.server import Request, Response

# Fields that are the request's own machinery, never headers of the object.
_NOT_HEADERS = frozenset(
    {"x-amz-algorithm", "x-amz-credential", "x-amz-date", "x-amz-signature", "x-amz-security-token"}
)
_HEADER_FIELDS = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-md5",
        "content-type",
        "expires",
    }
)


def _as_header(value: str) -> str:
    """Header values are kept as latin-1 text of the bytes: the UTF-8 of a field."""
    return value.encode("utf-8").decode("latin-1")


def _tagging(document: str) -> str:
    """The ``tagging`` field (a <Tagging> document) as an x-amz-tagging value."""
    return urlencode(list(parse_tag_set(document.encode("utf-8")).items()))


def object_headers(fields: dict[str, str]) -> list[tuple[str, str]]:
    """The PutObject headers a form's fields stand for."""
    headers: list[tuple[str, str]] = [("transfer-encoding", "chunked")]  # length unknown
    for name, value in fields.items():
        if name in _HEADER_FIELDS or (name.startswith("x-amz-") and name not in _NOT_HEADERS):
            headers.append((name, _as_header(value)))
        elif name == "acl":
            headers.append(("x-amz-acl", value))
        elif name == "tagging":
            headers.append(("x-amz-tagging", _tagging(value)))
    return headers


async def _within(
    data: AsyncIterator[bytes], bounds: tuple[int, int] | None
) -> AsyncIterator[bytes]:
    size = 0
    async for piece in data:
        size += len(piece)
        if bounds is not None and size > bounds[1]:
            raise errors.entity_too_large(size, bounds[1])
        yield piece
    if bounds is not None and size < bounds[0]:
        raise errors.entity_too_small(size, bounds[0])


def _answer(fields: dict[str, str], bucket: str, key: str, etag: str) -> Response:
    location = ops_objects.location_of(bucket, key)
    redirect = fields.get("success_action_redirect") or fields.get("redirect")
    if redirect and urlsplit(redirect).scheme in ("http", "https"):
        query = urlencode({"bucket": bucket, "key": key, "etag": etag})
        separator = "&" if "?" in redirect else "?"
        return empty(303, [("ETag", etag), ("Location", redirect + separator + query)])
    headers = [("ETag", etag), ("Location", location)]
    status = fields.get("success_action_status")
    if status == "200":
        return empty(200, headers)
    if status == "201":
        doc = xmldoc.Doc("PostResponse", namespace=False)
        doc.leaf("Location", location).leaf("Bucket", bucket).leaf("Key", key).leaf("ETag", etag)
        return xml(201, doc.to_bytes(), headers)
    return empty(204, headers)


async def post_object(
    gateway: Gateway, request: Request, route: Route, request_id: str
) -> Response:
    assert route.bucket is not None
    reader = form.FormReader(request.body, form.boundary_of(request.header("content-type")))
    sent, file = await reader.fields()
    fields: dict[str, str] = {}
    for name, value in sent:
        fields.setdefault(name.lower(), value)
    policy: post_policy.Policy | None = None
    user = acl.ANONYMOUS_USER
    if "policy" in fields:
        signed = post_policy.signature_of(fields, gateway.settings.region)
        found = await gateway.users.lookup_key(signed.access_key)
        if found is None:
            raise errors.invalid_access_key_id(signed.access_key)
        secret, user = found
        post_policy.verify(signed, secret.secret, fields["policy"])
        policy = post_policy.parse_policy(fields["policy"])
    if "key" not in fields:
        raise errors.invalid_argument(
            "Bucket POST must contain a field named 'key'.  If it is specified, please check "
            "the order of the fields.",
            "key",
            "",
        )
    # The key may name the file's own name; the policy judges the key that results.
    key = fields["key"] = fields["key"].replace("${filename}", file.filename or "")
    if policy is not None:
        policy.check({**fields, "bucket": route.bucket}, datetime.now(UTC))
    if not key:
        raise errors.invalid_argument("User key must have a length greater than 0.", "key", "")
    routing.check_key(key)
    body = _within(reader.file_data(), policy.length_range if policy is not None else None)
    put = Request(
        method="PUT",
        target=request.target,
        headers=object_headers(fields),
        http_version=request.http_version,
        scheme=request.scheme,
        peer=request.peer,
        body=cast(BodyReader, body),  # only iterated, as a BodyReader is
    )
    call = Call(gateway, put, Route("PutObject", route.bucket, key), user, request_id, None, None)
    stored = await ops_objects.put_object(call)
    etag = next(value for name, value in stored.headers if name == "ETag")
    return _answer(fields, route.bucket, key, etag)
