"""What a request says about the object it writes: HTTP metadata, user metadata, tags.

Validated before any body byte is read, so a request that will be refused costs nothing.
The stored forms are what GET and HEAD return.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qsl

from store.gateways.s3 import errors

# Request header -> stored under the same name, returned as the same response header.
STORED_HEADERS = (
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
)
DEFAULT_CONTENT_TYPE = "binary/octet-stream"
MAX_USER_METADATA = 2048
MAX_TAGS = 10
STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "OUTPOSTS",
        "GLACIER_IR",
        "SNOW",
        "EXPRESS_ONEZONE",
    }
)
# Headers that ask for something this gateway does not do: refused, never ignored.
UNSUPPORTED_HEADERS = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-website-redirect-location",
)


def http_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    stored: dict[str, str] = {}
    for name, value in headers:
        if name in STORED_HEADERS and name not in stored:
            if name == "content-encoding" and "aws-chunked" in value.lower():
                # aws-chunked is the framing of this request's body, not a coding of the
                # object; whatever else is listed is kept.
                codings = [
                    c.strip() for c in value.split(",") if c.strip().lower() != "aws-chunked"
                ]
                if not codings:
                    continue
                value = ", ".join(codings)
            stored[name] = value
    stored.setdefault("content-type", DEFAULT_CONTENT_TYPE)
    return stored


def user_metadata(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    meta: dict[str, str] = {}
    size = 0
    for name, value in headers:
        if name.startswith("x-amz-meta-"):
            key = name[len("x-amz-meta-") :]
            value = value.strip()
            meta[key] = f"{meta[key]},{value}" if key in meta else value
    for key, value in meta.items():
        size += len(key.encode("utf-8", "surrogateescape")) + len(
            value.encode("utf-8", "surrogateescape")
        )
    if size > MAX_USER_METADATA:
        raise errors.metadata_too_large(size)
    return meta


def check_unsupported(headers: Sequence[tuple[str, str]]) -> None:
    for name, value in headers:
        if name in UNSUPPORTED_HEADERS:
            raise errors.not_implemented(name)
        if name == "x-amz-storage-class":
            storage_class = value.strip()
            if storage_class not in STORAGE_CLASSES:
                raise errors.S3Error(
                    "InvalidStorageClass",
                    400,
                    "The storage class you specified is not valid",
                    {"StorageClassRequested": storage_class},
                )
            if storage_class != "STANDARD":
                raise errors.not_implemented("x-amz-storage-class")


def parse_tagging(value: str) -> dict[str, str]:
    """The x-amz-tagging header: a URL query string of key=value pairs (``key`` alone is
    a tag with an empty value)."""
    try:
        pairs = parse_qsl(value, keep_blank_values=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise errors.invalid_argument(
            "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query "
            "parameters without tag name duplicates.",
            "x-amz-tagging",
            value,
        ) from None
    return validate_tags(pairs)


def validate_tags(pairs: list[tuple[str, str]], *, limit: int = MAX_TAGS) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key, value in pairs:
        if key in tags:
            raise errors.S3Error(
                "InvalidTag", 400, "Cannot provide multiple Tags with the same key", {"TagKey": key}
            )
        if not 1 <= len(key) <= 128:
            raise errors.S3Error(
                "InvalidTag", 400, "The TagKey you have provided is invalid", {"TagKey": key}
            )
        if len(value) > 256:
            raise errors.S3Error(
                "InvalidTag",
                400,
                "The TagValue you have provided is too long, max length 256",
                {"TagKey": key},
            )
        tags[key] = value
    if len(tags) > limit:
        raise errors.S3Error("InvalidTag", 400, f"Tags cannot be more than {limit}")
    return tags
