"""Object operations: PutObject, GetObject, HeadObject, DeleteObject(s), CopyObject, ACLs
and tags."""

from __future__ import annotations

import time
from dataclasses import replace
from urllib.parse import quote

import trio

from store.gateways.s3 import (
    acl,
    acl_requests,
    attributes,
    conditions,
    errors,
    layout,
    object_lock,
    objects,
    versions,
    xmldoc,
)
from store.gateways.s3.acl_requests import RequestedAcl
from store.gateways.s3.backend import Gone
from store.gateways.s3.gateway import Call
from store.gateways.s3.layout import Bucket, Entry, Garbage, Part
from store.gateways.s3.payload import Payload
from store.gateways.s3.responses import empty, xml
from store.gateways.web.server import Response

MAX_PUT_SIZE = 5 * 1024**3
MAX_DELETE_KEYS = 1000
MAX_DELETE_BODY = 2 * 1024 * 1024
DELETE_PARALLELISM = 32
READ_RETRIES = 3


def requested_version(call: Call) -> str | None:
    """The version a request names with ``versionId`` (None: the current one)."""
    version = call.params.get("versionId")
    if version is None:
        return None
    if not versions.is_version_id(version):
        raise errors.invalid_argument("Invalid version id specified", "versionId", version)
    return version


def version_headers(
    bucket: Bucket, entry: Entry, *, written: bool = False
) -> list[tuple[str, str]]:
    """``x-amz-version-id`` (and ``x-amz-delete-marker``) of a version, in a bucket that
    is or was versioned. The answer to a write names no ``null`` version, as S3's."""
    if not bucket.versioning and entry.version is None:
        return []
    if written and versions.version_id(entry) == versions.NULL:
        return []
    headers = [("x-amz-version-id", versions.version_id(entry))]
    if entry.delete_marker:
        headers.append(("x-amz-delete-marker", "true"))
    return headers


async def find_version(
    call: Call, bucket: Bucket, key: str, version: str | None, permission: str = acl.READ
) -> Entry:
    """The object a request acts on: the current one or the version named, whose ACL
    must grant the caller ``permission``. A delete marker is NoSuchKey when current,
    MethodNotAllowed when named (as S3 answers); to a caller who may not list the bucket,
    what is not there is AccessDenied."""
    entry = await call.gateway.index.lookup(bucket, key, version)
    if (entry is None or entry.delete_marker) and not call.may_list(bucket, key):
        raise errors.access_denied()
    if entry is None:
        if version is None:
            raise errors.no_such_key(key)
        raise errors.no_such_version(key, version)
    if entry.delete_marker:
        if version is None:
            error = errors.no_such_key(key)
        else:
            error = errors.method_not_allowed(call.request.method, "DeleteMarker")
            error.headers.append(("Last-Modified", conditions.http_date(entry.mtime)))
        error.headers.extend(version_headers(bucket, entry))
        raise error
    call.check_object(bucket, entry, permission)
    return entry


async def store_body(
    call: Call, head: str, payload: Payload, max_size: int = MAX_PUT_SIZE
) -> tuple[int, str, tuple[str, str] | None]:
    """Stream the payload into a new data object; returns (size, ETag, checksum).

    Raises (after deleting what it wrote) when the payload fails any of its checks."""
    gateway = call.gateway
    async with objects.DataWriter(gateway.backend, head, gateway.budget) as writer:
        async for piece in payload:
            if writer.size + len(piece) > max_size:  # a body of unannounced length
                raise errors.entity_too_large(writer.size + len(piece), max_size)
            await writer.write(piece)
        size = await writer.finish()
        etag, checksum = payload.finish()
    return size, etag, checksum


MAX_ENTRY_BYTES = 32 * 1024


def check_entry_size(entry_bytes: bytes) -> None:
    """What is kept beside the data (HTTP headers, metadata, tags) must stay small: it is
    one omap value of the index, read by every listing."""
    if len(entry_bytes) > MAX_ENTRY_BYTES:
        raise errors.S3Error(
            "MetadataTooLarge",
            400,
            "Your metadata headers exceed the maximum allowed metadata size.",
            {"Size": str(len(entry_bytes)), "MaxSizeAllowed": str(MAX_ENTRY_BYTES)},
        )


async def publish(call: Call, bucket: Bucket, key: str, entry: Entry) -> Entry:
    """Publish an entry whose data is written and return it as published (with its
    version); frees that data if publishing fails."""
    gateway = call.gateway
    try:
        check_entry_size(replace(entry, data=None).to_bytes())
        if call.header("if-match") is not None or call.header("if-none-match") is not None:
            return await gateway.index.publish(
                bucket,
                key,
                entry,
                lambda current: conditions.check_put(
                    call.header, key, current.etag if current else None
                ),
            )
        return await gateway.index.publish(bucket, key, entry)
    except BaseException:
        garbage = Garbage.of_entry(entry)
        if garbage is not None:
            await gateway.collector.destroy(garbage)
        raise


def new_entry(
    call: Call,
    head: str,
    size: int,
    etag: str,
    *,
    headers: dict[str, str],
    meta: dict[str, str],
    checksum: tuple[str, str] | None,
    acl: RequestedAcl,
    tags: dict[str, str],
    lock: object_lock.Lock,
) -> Entry:
    """The entry of an object the caller has just written whole into data object `head`
    (an empty one has none), as of now."""
    return Entry(
        size=size,
        etag=etag,
        mtime=time.time(),
        owner=call.user.name,
        owner_id=call.user.id,
        head=head if size else None,
        headers=headers,
        meta=meta,
        checksum=checksum,
        acl=acl.canned,
        grants=acl.grants,
        tags=tags,
        lock_mode=lock.mode,
        lock_until=lock.until,
        legal_hold=lock.legal_hold,
    )


async def acl_of_write(call: Call, bucket: Bucket) -> RequestedAcl:
    """The ACL a write gives what it creates (owned by the caller), if the bucket's
    public access block allows it."""
    requested = await acl_requests.from_headers(call, call.user.id, bucket=False)
    acl.check_not_blocked(bucket.public_block, requested.canned, requested.grants)
    return requested


def lock_of_write(call: Call, bucket: Bucket) -> object_lock.Lock:
    """The object lock a write asks for, or the bucket's default retention."""
    return object_lock.from_headers(call.header, bucket.object_lock, bucket.lock_rule, time.time())


def written_headers(entry: Entry) -> list[tuple[str, str]]:
    headers = [("ETag", entry.quoted_etag)]
    if entry.checksum:
        headers.append((f"x-amz-checksum-{entry.checksum[0]}", entry.checksum[1]))
    return headers


async def put_object(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.WRITE)
    attributes.check_unsupported(call.headers)
    stored = attributes.http_headers(call.headers)
    meta = attributes.user_metadata(call.headers)
    requested = await acl_of_write(call, bucket)
    tagging = call.header("x-amz-tagging")
    tags = attributes.parse_tagging(tagging) if tagging is not None else {}
    lock = lock_of_write(call, bucket)
    payload = call.payload()
    if payload.length is not None and payload.length > MAX_PUT_SIZE:
        raise errors.entity_too_large(payload.length, MAX_PUT_SIZE)
    if call.header("if-none-match") is not None or call.header("if-match") is not None:
        current = await call.gateway.index.get(bucket, call.key)
        conditions.check_put(call.header, call.key, current.etag if current else None)
    head = layout.data_name(bucket.id)
    small = payload.length is not None and 0 < payload.length <= layout.INLINE_MAX
    data: bytes | None = None
    if small and not bucket.versioning:
        # Kept in the index: one cluster write (the entry and its bytes) instead of two.
        data = await payload.read_all(layout.INLINE_MAX)
        etag, checksum = payload.finish()
        size = len(data)
    else:
        size, etag, checksum = await store_body(call, head, payload)
    entry = new_entry(
        call,
        head,
        size,
        etag,
        headers=stored,
        meta=meta,
        checksum=checksum,
        acl=requested,
        tags=tags,
        lock=lock,
    )
    if data is not None:
        entry = replace(entry, head=None, inline=True, data=data)
    entry = await publish(call, bucket, call.key, entry)
    return empty(200, written_headers(entry) + version_headers(bucket, entry, written=True))


# --- reading --------------------------------------------------------------------------------

_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
_HEADER_NAMES = {
    "content-type": "Content-Type",
    "content-encoding": "Content-Encoding",
    "content-disposition": "Content-Disposition",
    "content-language": "Content-Language",
    "cache-control": "Cache-Control",
    "expires": "Expires",
}


def object_headers(call: Call, entry: Entry) -> list[tuple[str, str]]:
    headers = [
        ("ETag", entry.quoted_etag),
        ("Last-Modified", conditions.http_date(entry.mtime)),
        ("Accept-Ranges", "bytes"),
    ]
    stored = dict(entry.headers)
    for param, header in _OVERRIDES.items():
        if param in call.params:
            stored[header.lower()] = call.params[param]
    headers.extend(
        (_HEADER_NAMES[name], value) for name, value in stored.items() if name in _HEADER_NAMES
    )
    headers.extend((f"x-amz-meta-{name}", value) for name, value in entry.meta.items())
    if entry.tags:
        headers.append(("x-amz-tagging-count", str(len(entry.tags))))
    if entry.parts:
        headers.append(("x-amz-mp-parts-count", str(entry.parts)))
    return headers


def _part_number(call: Call) -> int | None:
    raw = call.params.get("partNumber")
    if raw is None:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise errors.invalid_argument(
            "Part number must be an integer between 1 and 10000, inclusive", "partNumber", raw
        )
    if call.header("range") is not None:
        raise errors.invalid_request(
            "Cannot specify both Range header and partNumber query parameter"
        )
    return int(raw)


async def _part_range(call: Call, entry: Entry, number: int) -> tuple[int, int, Part | None]:
    """Bytes [start, end) of part ``number`` (the whole object is part 1 of a single
    upload), and the part as the manifest lists it."""
    if not entry.parts:
        if number != 1:
            raise errors.invalid_part()
        return 0, entry.size, None
    parts = await objects.load_manifest(call.gateway.backend, entry)
    if number > len(parts):
        raise errors.invalid_part()
    start = sum(p.size for p in parts[: number - 1])
    return start, start + parts[number - 1].size, parts[number - 1]


def checksum_headers(
    call: Call, entry: Entry, part: Part | None, whole: bool
) -> list[tuple[str, str]]:
    """x-amz-checksum-* of what is returned, when the client asked for checksums."""
    if (call.header("x-amz-checksum-mode") or "").upper() != "ENABLED" or entry.checksum is None:
        return []
    algorithm = entry.checksum[0]
    if part is not None and part.checksum is not None:
        value = part.checksum
    elif whole:
        value = entry.checksum[1]
    else:
        return []  # a range has no checksum of its own
    return [(f"x-amz-checksum-{algorithm}", value), ("x-amz-checksum-type", entry.checksum_type)]


async def get_object(call: Call, *, head_only: bool = False) -> Response:
    bucket = await call.existing_bucket()
    version = requested_version(call)
    gateway = call.gateway
    for attempt in range(READ_RETRIES):
        entry = await find_version(call, bucket, call.key, version)
        try:
            conditions.check_get(call.header, entry.etag, entry.mtime)
        except conditions.NotModified:
            return empty(
                304,
                [("ETag", entry.quoted_etag), ("Last-Modified", conditions.http_date(entry.mtime))],
            )
        headers = object_headers(call, entry) + version_headers(bucket, entry)
        headers += object_lock.response_headers(entry)
        number = _part_number(call)
        status = 200
        part: Part | None = None
        if number is not None:
            start, end, part = await _part_range(call, entry, number)
            if entry.parts:
                status = 206
        else:
            selected = conditions.parse_range(call.header("range"), entry.size)
            start, end = selected if selected is not None else (0, entry.size)
            if selected is not None:
                status = 206
        if status == 206:
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{entry.size}"))
        headers.extend(checksum_headers(call, entry, part, (start, end) == (0, entry.size)))
        headers.append(("Content-Length", str(end - start)))
        if head_only:
            return empty(status, headers)
        if entry.inline:
            try:
                return Response(status, headers, objects.inline_bytes(entry, start, end))
            except objects.DataLost:
                raise errors.internal_error() from None
        try:
            segments = await objects.plan(gateway.backend, entry, start, end)
            first = await objects.read_first(gateway.backend, segments)
        except (Gone, objects.DataLost):
            if attempt + 1 < READ_RETRIES:
                continue  # overwritten and freed while we looked: read the new entry
            raise errors.internal_error() from None
        body = objects.stream_segments(
            gateway.backend, segments, gateway.budget, gateway.nursery, first
        )
        return Response(status, headers, body)
    raise errors.internal_error()


async def head_object(call: Call) -> Response:
    return await get_object(call, head_only=True)


# --- deleting -------------------------------------------------------------------------------


async def remove_key(
    call: Call,
    bucket: Bucket,
    key: str,
    version: str | None,
    condition: conditions.DeleteCondition,
) -> list[tuple[str, str]]:
    """Delete the key's object (or, with ``version``, that version for good); returns the
    headers saying what was done in a versioned bucket."""
    index = call.gateway.index
    if version is not None:
        bypass = object_lock.bypass_requested(call.header)

        def removable(entry: Entry) -> None:
            object_lock.check_removable(entry, bypass, time.time())

        removed = await index.delete_version(bucket, key, version, removable)
        if removed is None:
            return [("x-amz-version-id", version)] if bucket.versioning else []
        return version_headers(bucket, removed)

    def check(entry: Entry | None) -> None:
        if entry is None:
            condition.check(None, 0, 0)
        else:
            condition.check(entry.etag, entry.mtime, entry.size)

    owner = (call.user.name, call.user.id)
    marker = await index.delete(bucket, key, None if condition.empty else check, owner=owner)
    return version_headers(bucket, marker) if marker is not None else []


async def delete_object(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.WRITE)
    version = requested_version(call)
    condition = conditions.delete_condition(
        call.header("if-match"),
        call.header("x-amz-if-match-last-modified-time"),
        call.header("x-amz-if-match-size"),
    )
    return empty(204, await remove_key(call, bucket, call.key, version, condition))


async def delete_objects(call: Call) -> Response:
    bucket = await call.existing_bucket()
    if bucket.policy is None:  # else the policy decides key by key
        call.check_bucket(bucket, acl.WRITE, key=None)
    if call.header("content-md5") is None and not any(
        name.startswith("x-amz-checksum-") or name == "x-amz-sdk-checksum-algorithm"
        for name, _ in call.headers
    ):
        raise errors.invalid_request("Missing required header for this request: Content-Md5.")
    payload = call.payload()
    body = await payload.read_all(MAX_DELETE_BODY)
    payload.finish()
    root = xmldoc.parse(body, "Delete")
    quiet = (xmldoc.child_text(root, "Quiet") or "").strip().lower() == "true"
    targets: list[tuple[str, str | None, conditions.DeleteCondition]] = []
    for item in xmldoc.children(root, "Object"):
        key = xmldoc.child_text(item, "Key")
        if key is None:
            raise errors.malformed_xml()
        condition = conditions.delete_condition(
            xmldoc.child_text(item, "ETag"),
            xmldoc.child_text(item, "LastModifiedTime"),
            xmldoc.child_text(item, "Size"),
        )
        targets.append((key, xmldoc.child_text(item, "VersionId"), condition))
    if not targets or len(targets) > MAX_DELETE_KEYS:
        raise errors.malformed_xml()
    failures: list[errors.S3Error | None] = [None] * len(targets)
    limiter = trio.CapacityLimiter(DELETE_PARALLELISM)

    done: list[dict[str, str]] = [{} for _ in targets]

    async def delete_one(
        i: int, key: str, version: str | None, condition: conditions.DeleteCondition
    ) -> None:
        size = len(key.encode("utf-8", "surrogatepass"))
        if not key:
            failures[i] = errors.invalid_argument("Invalid key")
        elif size > 1024:
            failures[i] = errors.key_too_long(size)
        elif version is not None and not versions.is_version_id(version):
            failures[i] = errors.no_such_version(key, version)
        else:
            async with limiter:
                try:
                    if bucket.policy is not None:
                        action = "s3:DeleteObject" if version is None else "s3:DeleteObjectVersion"
                        call.check_bucket(bucket, acl.WRITE, key=key, action=action)
                    done[i] = dict(await remove_key(call, bucket, key, version, condition))
                except errors.S3Error as exc:
                    failures[i] = exc

    async with trio.open_nursery() as nursery:
        for i, (key, version, condition) in enumerate(targets):
            nursery.start_soon(delete_one, i, key, version, condition)
    doc = xmldoc.Doc("DeleteResult")
    for (key, version, _), failure, headers in zip(targets, failures, done, strict=True):
        if failure is not None:
            doc.open("Error").leaf("Key", key)
            if version is not None:
                doc.leaf("VersionId", version)
            doc.leaf("Code", failure.code).leaf("Message", failure.message).close()
        elif not quiet:
            doc.open("Deleted").leaf("Key", key)
            if version is not None:
                doc.leaf("VersionId", version)
            if headers.get("x-amz-delete-marker") == "true":
                doc.leaf("DeleteMarker", True)
                if version is None:
                    doc.leaf("DeleteMarkerVersionId", headers["x-amz-version-id"])
            doc.close()
    return xml(200, doc.to_bytes())


def location_of(bucket: str, key: str) -> str:
    return f"/{bucket}/{quote(key, safe='/~')}"
