"""CopyObject, and the copying of data it shares with UploadPartCopy."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncGenerator
from dataclasses import replace

from store.gateways.s3 import (
    acl,
    attributes,
    checksums,
    conditions,
    errors,
    layout,
    objects,
    versions,
    xmldoc,
)
from store.gateways.s3.gateway import Call
from store.gateways.s3.layout import Bucket, Entry
from store.gateways.s3.ops_objects import (
    acl_of_write,
    lock_of_write,
    new_entry,
    publish,
    version_headers,
)
from store.gateways.s3.responses import xml
from store.gateways.s3.sigv4 import decode_component
from store.gateways.web.server import Response

MAX_COPY_SIZE = 5 * 1024**3


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """x-amz-copy-source: [/]bucket/key[?versionId=...], URL-encoded."""
    source, _, query = value.partition("?")
    version = None
    if query:
        name, _, raw = query.partition("=")
        if name != "versionId":
            raise errors.invalid_argument(
                "Invalid copy source object key", "x-amz-copy-source", value
            )
        version = decode_component(raw)
    source = decode_component(source.lstrip("/"))
    bucket, slash, key = source.partition("/")
    if not bucket or not slash or not key:
        raise errors.invalid_argument("Invalid copy source object key", "x-amz-copy-source", value)
    return bucket, key, version


async def copy_source_entry(call: Call) -> tuple[Bucket, str, Entry, bool]:
    """The source object: its bucket, key, entry, and whether a version was named."""
    value = call.header("x-amz-copy-source") or ""
    bucket_name, key, version = parse_copy_source(value)
    if version is not None and not versions.is_version_id(version):
        raise errors.invalid_argument("Invalid version id specified", "x-amz-copy-source", value)
    source_bucket = await call.existing_bucket(bucket_name)
    entry = await call.gateway.index.lookup(source_bucket, key, version)
    if (entry is None or entry.delete_marker) and not call.may_list(source_bucket, key):
        raise errors.access_denied()
    if entry is None or (entry.delete_marker and version is None):
        raise errors.no_such_key(key) if version is None else errors.no_such_version(key, version)
    if entry.delete_marker:
        raise errors.invalid_request(
            "The source of a copy request may not specifically refer to a delete marker by "
            "version id."
        )
    action = "s3:GetObjectVersion" if version is not None else "s3:GetObject"
    call.check_object(source_bucket, entry, acl.READ, action=action, key=key)
    conditions.check_copy_source(call.header, entry.etag, entry.mtime)
    return source_bucket, key, entry, version is not None


def source_version_headers(bucket: Bucket, entry: Entry) -> list[tuple[str, str]]:
    """x-amz-copy-source-version-id, when the source bucket is or was versioned."""
    return [
        ("x-amz-copy-source-version-id", value)
        for name, value in version_headers(bucket, entry)
        if name == "x-amz-version-id"
    ]


async def copy_data(
    call: Call, entry: Entry, start: int, end: int, head: str, algorithm: str | None = None
) -> tuple[int, str, tuple[str, str] | None]:
    """Copy bytes [start, end) of an object into a new data object: (size, hex MD5,
    checksum of ``algorithm`` if one is asked for)."""
    gateway = call.gateway
    md5 = hashlib.md5()
    hasher = checksums.new_hasher(algorithm) if algorithm else None
    chunks = _source_bytes(call, entry, start, end)
    async with objects.DataWriter(gateway.backend, head, gateway.budget) as writer:
        try:
            async for chunk in chunks:
                md5.update(chunk)
                if hasher is not None:
                    hasher.update(chunk)
                await writer.write(chunk)
        finally:
            await chunks.aclose()
        size = await writer.finish()
    checksum = None
    if hasher is not None and algorithm is not None:
        checksum = (algorithm, base64.b64encode(hasher.digest()).decode())
    return size, md5.hexdigest(), checksum


async def read_small(call: Call, entry: Entry) -> bytes:
    """The whole of a small object (kept in the index or not), read into memory."""
    chunks = _source_bytes(call, entry, 0, entry.size)
    try:
        return b"".join([chunk async for chunk in chunks])
    finally:
        await chunks.aclose()


async def _source_bytes(
    call: Call, entry: Entry, start: int, end: int
) -> AsyncGenerator[bytes | bytearray, None]:
    """Bytes [start, end) of a copy source, in pieces, wherever they are kept."""
    try:
        if entry.inline:
            yield objects.inline_bytes(entry, start, end)
            return
        gateway = call.gateway
        segments = await objects.plan(gateway.backend, entry, start, end)
        chunks = objects.stream_segments(gateway.backend, segments, gateway.budget, gateway.nursery)
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()
    except objects.DataLost:
        raise errors.no_such_key("source changed during the copy") from None


async def copy_object(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.WRITE)
    source_bucket, source_key, source, named = await copy_source_entry(call)
    attributes.check_unsupported(call.headers)
    directive = (call.header("x-amz-metadata-directive") or "COPY").upper()
    tagging_directive = (call.header("x-amz-tagging-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise errors.invalid_argument(
            "Unknown metadata directive.", "x-amz-metadata-directive", directive
        )
    if tagging_directive not in ("COPY", "REPLACE"):
        raise errors.invalid_argument(
            "Unknown tagging directive.", "x-amz-tagging-directive", tagging_directive
        )
    if source.size > MAX_COPY_SIZE:
        raise errors.invalid_request(
            "The specified copy source is larger than the maximum allowable size for a copy "
            f"source: {MAX_COPY_SIZE}"
        )
    if directive == "REPLACE":
        stored, meta = attributes.http_headers(call.headers), attributes.user_metadata(call.headers)
    else:
        stored, meta = dict(source.headers), dict(source.meta)
    if tagging_directive == "REPLACE":
        tagging = call.header("x-amz-tagging")
        tags = attributes.parse_tagging(tagging) if tagging else {}
    else:
        tags = dict(source.tags)
    requested = await acl_of_write(call, bucket)
    if (
        source_bucket.id == bucket.id
        and source_key == call.key
        and directive == "COPY"
        and call.header("x-amz-storage-class") is None
        and not named  # copying an older version over the current one restores it
    ):
        raise errors.invalid_request(
            "This copy request is illegal because it is trying to copy an object to itself "
            "without changing the object's metadata, storage class, website redirect "
            "location or encryption attributes."
        )
    head = layout.data_name(bucket.id)
    size, etag = 0, _EMPTY_MD5
    data: bytes | None = None
    if 0 < source.size <= layout.INLINE_MAX and not bucket.versioning:
        data = await read_small(call, source)  # the copy is kept in the index too
        size, etag = len(data), hashlib.md5(data).hexdigest()
    elif source.size:
        size, etag, _ = await copy_data(call, source, 0, source.size, head)
    entry = new_entry(
        call,
        head,
        size,
        etag,
        headers=stored,
        meta=meta,
        checksum=source.checksum if not source.parts else None,
        acl=requested,
        tags=tags,
        lock=lock_of_write(call, bucket),
    )
    if data is not None:
        entry = replace(entry, head=None, inline=True, data=data)
    entry = await publish(call, bucket, call.key, entry)
    doc = xmldoc.Doc("CopyObjectResult")
    doc.leaf("LastModified", xmldoc.iso_time(entry.mtime)).leaf("ETag", entry.quoted_etag)
    if entry.checksum:
        doc.leaf(f"Checksum{entry.checksum[0].upper()}", entry.checksum[1])
    headers = source_version_headers(source_bucket, source)
    headers += version_headers(bucket, entry, written=True)
    return xml(200, doc.to_bytes(), headers)


_EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
