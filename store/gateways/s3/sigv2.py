"""AWS Signature Version 2 for S3 (the older HMAC-SHA1 scheme), header and query forms.

Many clients still presign URLs this way by default (boto3 with a custom endpoint does),
so the gateway verifies it as S3 documents it: the string to sign is the method,
Content-MD5, Content-Type, Date (or the ``Expires`` of a presigned URL; empty when
``x-amz-date`` is sent), the ``x-amz-*`` headers sorted, and the *canonical resource*:
``/bucket/key`` as sent on the wire plus the sub-resources of interest, sorted. There is no
payload hash: a body is protected only by Content-MD5 when the client sends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from store.gateways.s3 import errors, sigv4
from store.gateways.s3.sigv4 import decode_component, header_value, split_query

MAX_SKEW = timedelta(minutes=15)
SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "delete",
        "inventory",
        "lifecycle",
        "location",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "partNumber",
        "policy",
        "replication",
        "requestPayment",
        "response-cache-control",
        "response-content-disposition",
        "response-content-encoding",
        "response-content-language",
        "response-content-type",
        "response-expires",
        "restore",
        "select",
        "select-type",
        "storageClass",
        "tagging",
        "torrent",
        "uploadId",
        "uploads",
        "versionId",
        "versioning",
        "versions",
        "website",
    }
)


@dataclass(frozen=True)
class SignedRequestV2:
    access_key: str
    signature: str
    presigned: bool
    expires: int | None = None


def parse_request(
    raw_query: str, headers: Sequence[tuple[str, str]], *, now: datetime
) -> SignedRequestV2 | None:
    """The request's SigV2 fields, or None when it carries none."""
    authorization = header_value(headers, "authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme != "AWS":
            return None
        access_key, sep, signature = credentials.strip().rpartition(":")
        if not sep or not access_key or not signature:
            raise errors.invalid_argument(
                "AWS authorization header is invalid.  Expected AwsAccessKeyId:signature",
                "Authorization",
                authorization,
            )
        _check_date(headers, now)
        return SignedRequestV2(access_key, signature, presigned=False)
    params: dict[str, str] = {}
    for name, value in split_query(raw_query):
        params.setdefault(decode_component(name), decode_component(value))
    if "AWSAccessKeyId" not in params and "Signature" not in params:
        return None
    if not all(params.get(name) for name in ("AWSAccessKeyId", "Signature", "Expires")):
        raise errors.access_denied(
            "Query-string authentication requires the Signature, Expires and "
            "AWSAccessKeyId parameters"
        )
    raw_expires = params["Expires"]
    if not raw_expires.isdigit() or len(raw_expires) > 12:
        raise errors.access_denied("Invalid date (should be seconds since epoch): " + raw_expires)
    expires = int(raw_expires)
    if now.timestamp() > expires:
        raise errors.access_denied(
            "Request has expired",
            Expires=datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            ServerTime=now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    return SignedRequestV2(params["AWSAccessKeyId"], params["Signature"], True, expires)


def _check_date(headers: Sequence[tuple[str, str]], now: datetime) -> None:
    raw = header_value(headers, "x-amz-date") or header_value(headers, "date")
    when = None
    if raw is not None:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            when = None
    if when is None:
        raise errors.access_denied("AWS authentication requires a valid Date or x-amz-date header")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if abs(when - now) > MAX_SKEW:
        raise errors.request_time_too_skewed(
            when.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%dT%H%M%SZ")
        )


def string_to_sign(
    method: str,
    resource_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    *,
    expires: int | None,
) -> str:
    """``resource_path`` is ``/bucket/key`` as sent (still percent-encoded)."""
    amz: dict[str, list[str]] = {}
    for name, value in headers:
        if name.startswith("x-amz-"):
            amz.setdefault(name, []).append(" ".join(value.split()))
    subresources: list[tuple[str, str | None]] = []
    for part in raw_query.split("&") if raw_query else []:
        raw_name, has_value, raw_value = part.partition("=")
        name = decode_component(raw_name)
        if expires is not None and name.startswith("x-amz-") and name not in amz:
            # A presigned URL carries the x-amz-* headers it signed in its query.
            amz[name] = [decode_component(raw_value)]
        if name in SUBRESOURCES:
            subresources.append((name, decode_component(raw_value) if has_value else None))
    if expires is not None:
        date = str(expires)
    elif header_value(headers, "x-amz-date") is not None:
        date = ""
    else:
        date = header_value(headers, "date") or ""
    lines = [
        method,
        (header_value(headers, "content-md5") or "").strip(),
        (header_value(headers, "content-type") or "").strip(),
        date,
    ]
    lines.extend(f"{name}:{','.join(values)}" for name, values in sorted(amz.items()))
    resource = resource_path
    if subresources:
        subresources.sort(key=lambda item: item[0])
        resource += "?" + "&".join(n if v is None else f"{n}={v}" for n, v in subresources)
    return "\n".join([*lines, resource])


def sign(secret: str, text: str) -> str:
    digest = hmac.new(secret.encode("utf-8"), sigv4.as_sent(text), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify(
    signed: SignedRequestV2,
    secret: str,
    method: str,
    resource_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
) -> None:
    expires = signed.expires if signed.presigned else None
    # A bucket's own resource is "/bucket" as sent, but clients commonly sign "/bucket/".
    resources = [resource_path]
    if resource_path.count("/") == 1 and len(resource_path) > 1:
        resources.append(resource_path + "/")
    texts = [string_to_sign(method, r, raw_query, headers, expires=expires) for r in resources]
    for text in texts:
        if hmac.compare_digest(sign(secret, text), signed.signature):
            return
    raise errors.signature_does_not_match(texts[0], signed.signature, signed.access_key, "")
