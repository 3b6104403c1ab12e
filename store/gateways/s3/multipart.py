"""Multipart uploads: create, upload parts (or copy them), complete, abort, list.

Theory of operation
-------------------
An upload is an object ``s3.upload.<id>`` whose omap holds the upload record (``meta``)
and one entry per part (``p.00001`` ...): each part's bytes are written to their own
striped data object first and recorded by a swap, so a part uploaded twice replaces the
first whole and the first goes to the collector. The bucket's ``s3.uploads.<bucket id>``
lists uploads by key, for ListMultipartUploads.

Completing writes a manifest (the chosen parts, in order) as the new object's head and
publishes it like any object: the parts become the object's data, and its ETag is the MD5
of the parts' MD5s with ``-N``. Before that the upload is marked ``completing`` by
compare-and-set, which Abort, UploadPart and a second Complete respect, so parts that an
object now owns are never freed by the upload. Parts not named by the completion are
freed. An abort removes the upload record (on condition that no part arrived since it
was read) and frees every part.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping

from store.errors import Code, RemoteError
from store.gateways.s3 import (
    acl,
    attributes,
    checksums,
    conditions,
    errors,
    layout,
    listing,
    xmldoc,
)
from store.gateways.s3.backend import Gone, cluster_error
from store.gateways.s3.gateway import Call, Gateway
from store.gateways.s3.layout import Bucket, Garbage, PartEntry, Upload, UploadRef
from store.gateways.s3.listing_params import enc, url_encoding
from store.gateways.s3.ops_copy import copy_data, copy_source_entry, source_version_headers
from store.gateways.s3.ops_objects import acl_of_write, check_entry_size, lock_of_write, store_body
from store.gateways.s3.responses import empty, xml
from store.gateways.web.server import Response

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000
MAX_COMPLETE_BODY = 4 * 1024 * 1024
COMPLETING = b"completing"


def upload_id_of(call: Call) -> str:
    upload_id = call.params.get("uploadId", "")
    if not upload_id or len(upload_id) > 128 or not upload_id.isalnum():
        raise errors.no_such_upload(upload_id)
    return upload_id


def _part_number(call: Call) -> int:
    raw = call.params.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PARTS:
        raise errors.invalid_argument(
            "Part number must be an integer between 1 and 10000, inclusive", "partNumber", raw
        )
    return int(raw)


async def load_upload(gateway: Gateway, bucket: Bucket, key: str, upload_id: str) -> Upload:
    try:
        values = await gateway.backend.omap_get(layout.upload_name(upload_id), ["meta", "state"])
    except Gone:
        raise errors.no_such_upload(upload_id) from None
    raw = values.get("meta")
    if raw is None or "state" in values:
        raise errors.no_such_upload(upload_id)
    upload = Upload.from_bytes(raw)
    if upload.bucket_id != bucket.id or upload.key != key:
        raise errors.no_such_upload(upload_id)
    return upload


async def part_entries(gateway: Gateway, upload_id: str) -> tuple[list[PartEntry], list[int]]:
    """Every part entry of an upload, and the upload object's version when read."""
    name = layout.upload_name(upload_id)
    parts: list[PartEntry] = []
    after: str | None = None
    version: list[int] = []
    while True:
        try:
            reply = await gateway.backend.execute(name, [["omap_list", after, 500, "p."]])
        except RemoteError as exc:
            if exc.code == Code.ENOENT:
                raise Gone(name) from None
            if exc.code == Code.EFBIG:
                raise errors.internal_error() from None
            raise cluster_error(exc) from None
        version = list(reply["v"])
        result = reply["res"][0]
        parts.extend(PartEntry.from_bytes(bytes(v)) for _, v in result["entries"])
        if not result["more"] or not result["entries"]:
            return parts, version
        after = str(result["entries"][-1][0])


# --- create ---------------------------------------------------------------------------------


async def create_multipart_upload(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.WRITE)
    attributes.check_unsupported(call.headers)
    tagging = call.header("x-amz-tagging")
    algorithm, checksum_type = _checksum_choice(call)
    lock = lock_of_write(call, bucket)
    requested = await acl_of_write(call, bucket)
    upload = Upload(
        upload_id=layout.new_token(),
        bucket=bucket.name,
        bucket_id=bucket.id,
        key=call.key,
        initiated=time.time(),
        owner=call.user.name,
        owner_id=call.user.id,
        headers=attributes.http_headers(call.headers),
        meta=attributes.user_metadata(call.headers),
        acl=requested.canned,
        grants=requested.grants,
        tags=attributes.parse_tagging(tagging) if tagging is not None else {},
        checksum_algorithm=algorithm,
        checksum_type=checksum_type,
        lock_mode=lock.mode,
        lock_until=lock.until,
        legal_hold=lock.legal_hold,
    )
    gateway = call.gateway
    record = upload.to_bytes()
    check_entry_size(record)
    await gateway.backend.execute(
        layout.upload_name(upload.upload_id), [["omap_set", {"meta": record}]]
    )
    ref = UploadRef(upload.upload_id, upload.initiated, upload.owner, upload.owner_id)

    def add(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], None]:
        refs = layout.unpack_upload_refs(current.get(call.key))
        return {call.key: layout.pack_upload_refs([*refs, ref])}, None

    await gateway.backend.compare_and_set(layout.uploads_name(bucket.id), [call.key], add)
    doc = xmldoc.Doc("InitiateMultipartUploadResult")
    doc.leaf("Bucket", bucket.name).leaf("Key", call.key).leaf("UploadId", upload.upload_id)
    headers = []
    if algorithm and checksum_type:
        headers = [
            ("x-amz-checksum-algorithm", algorithm.upper()),
            ("x-amz-checksum-type", checksum_type),
        ]
    return xml(200, doc.to_bytes(), headers)


def _checksum_choice(call: Call) -> tuple[str | None, str | None]:
    """The checksum algorithm and type an upload declares (x-amz-checksum-algorithm/-type)."""
    algorithm = (call.header("x-amz-checksum-algorithm") or "").strip().lower() or None
    checksum_type = (call.header("x-amz-checksum-type") or "").strip().upper() or None
    if algorithm is not None and algorithm not in checksums.ALGORITHMS:
        raise errors.invalid_request("Checksum algorithm provided is unsupported.")
    if checksum_type not in (None, "COMPOSITE", "FULL_OBJECT"):
        raise errors.invalid_request("Value for x-amz-checksum-type header is invalid.")
    if algorithm is None:
        if checksum_type is not None:
            raise errors.invalid_request(
                "The x-amz-checksum-type header can only be used with the "
                "x-amz-checksum-algorithm header."
            )
        return None, None
    if checksum_type is None:
        checksum_type = "FULL_OBJECT" if algorithm == "crc64nvme" else "COMPOSITE"
    if checksum_type == "FULL_OBJECT" and algorithm not in checksums.CRCS:
        raise errors.invalid_request(
            f"The FULL_OBJECT checksum type cannot be used with the {algorithm} checksum algorithm."
        )
    if checksum_type == "COMPOSITE" and algorithm == "crc64nvme":
        raise errors.invalid_request(
            "The COMPOSITE checksum type cannot be used with the crc64nvme checksum algorithm."
        )
    return algorithm, checksum_type


async def forget_upload(gateway: Gateway, bucket_id: str, key: str, upload_id: str) -> None:
    def remove(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], None]:
        refs = [r for r in layout.unpack_upload_refs(current.get(key)) if r.upload_id != upload_id]
        return {key: layout.pack_upload_refs(refs) if refs else None}, None

    await gateway.backend.compare_and_set(layout.uploads_name(bucket_id), [key], remove)


# --- parts ----------------------------------------------------------------------------------


async def _record_part(call: Call, upload_id: str, part: PartEntry) -> None:
    gateway = call.gateway
    try:
        old = await gateway.backend.swap(
            layout.upload_name(upload_id), layout.part_key(part.number), part.to_bytes()
        )
    except Gone:
        garbage = Garbage.of_part(part)
        if garbage is not None:
            await gateway.collector.destroy(garbage)
        raise errors.no_such_upload(upload_id) from None
    if old is not None:
        # Once a completion has begun, the part replaced may be in its manifest: leave it
        # (an orphan for `store s3 gc`) rather than free data an object may own.
        try:
            state = await gateway.backend.omap_get(layout.upload_name(upload_id), ["state"])
        except Gone:
            state = {"state": COMPLETING}
        if "state" not in state:
            await gateway.collector.discard(Garbage.of_part(PartEntry.from_bytes(old)))


async def upload_part(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.WRITE)
    upload_id = upload_id_of(call)
    number = _part_number(call)
    upload = await load_upload(call.gateway, bucket, call.key, upload_id)
    payload = call.payload(default_algorithm=upload.checksum_algorithm)
    declared = payload.digests.expected.algorithm
    if upload.checksum_algorithm is not None and declared != upload.checksum_algorithm:
        raise errors.invalid_request(
            f"Checksum Type mismatch occurred, expected checksum Type: "
            f"{upload.checksum_algorithm}, actual checksum Type: {declared}"
        )
    if payload.length is not None and payload.length > MAX_PART_SIZE:
        raise errors.entity_too_large(payload.length, MAX_PART_SIZE)
    head = layout.part_data_name(upload.upload_id)
    size, etag, checksum = await store_body(call, head, payload, MAX_PART_SIZE)
    part = PartEntry(number, head if size else None, size, etag, time.time(), checksum)
    await _record_part(call, upload_id, part)
    headers = [("ETag", f'"{etag}"')]
    if checksum:
        headers.append((f"x-amz-checksum-{checksum[0]}", checksum[1]))
    return empty(200, headers)


async def upload_part_copy(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.WRITE)
    upload_id = upload_id_of(call)
    number = _part_number(call)
    upload = await load_upload(call.gateway, bucket, call.key, upload_id)
    source_bucket, _, source, _ = await copy_source_entry(call)
    selected = call.header("x-amz-copy-source-range")
    start, end = (0, source.size)
    if selected is not None:
        start, end = conditions.parse_copy_range(selected, source.size)
    if end - start > MAX_PART_SIZE:
        raise errors.entity_too_large(end - start, MAX_PART_SIZE)
    head = layout.part_data_name(upload_id)
    algorithm = upload.checksum_algorithm
    if end > start:
        size, etag, checksum = await copy_data(call, source, start, end, head, algorithm)
    else:
        size, etag = 0, hashlib.md5().hexdigest()
        checksum = (algorithm, checksums.digest_b64(algorithm, b"")) if algorithm else None
    part = PartEntry(number, head if size else None, size, etag, time.time(), checksum)
    await _record_part(call, upload_id, part)
    doc = xmldoc.Doc("CopyPartResult")
    doc.leaf("LastModified", xmldoc.iso_time(part.mtime)).leaf("ETag", f'"{etag}"')
    if checksum:
        doc.leaf(f"Checksum{checksum[0].upper()}", checksum[1])
    return xml(200, doc.to_bytes(), source_version_headers(source_bucket, source))


# --- abort ----------------------------------------------------------------------------------


async def _abort(gateway: Gateway, bucket_id: str, key: str, upload_id: str) -> None:
    name = layout.upload_name(upload_id)
    while True:
        try:
            parts, version = await part_entries(gateway, upload_id)
            state = await gateway.backend.omap_get(name, ["state"])
        except Gone:
            raise errors.no_such_upload(upload_id) from None
        if "state" in state:
            raise errors.no_such_upload(upload_id)
        try:
            await gateway.backend.delete(name, {"version": version})
        except RemoteError:  # a part arrived meanwhile: read again
            continue
        break
    for part in parts:
        garbage = Garbage.of_part(part)
        if garbage is not None:
            await gateway.collector.destroy(garbage)
    await forget_upload(gateway, bucket_id, key, upload_id)


async def abort_multipart_upload(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.WRITE)
    upload_id = upload_id_of(call)
    await load_upload(call.gateway, bucket, call.key, upload_id)
    await _abort(call.gateway, bucket.id, call.key, upload_id)
    return empty(204)


async def abort_all_uploads(gateway: Gateway, bucket: Bucket) -> None:
    """Abort every upload of a bucket that is being deleted."""
    name = layout.uploads_name(bucket.id)
    after: str | None = None
    while True:
        try:
            page, more = await gateway.backend.omap_page(name, after, 200)
        except Gone:
            return
        for key, raw in page:
            for ref in layout.unpack_upload_refs(raw):
                try:
                    await _abort(gateway, bucket.id, key, ref.upload_id)
                except errors.S3Error:
                    pass  # completed or aborted meanwhile
        if not more or not page:
            break
        after = page[-1][0]
    await gateway.backend.delete(name)


# --- listing --------------------------------------------------------------------------------


def _int(call: Call, name: str, default: int, high: int) -> int:
    raw = call.params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > 2147483647:
        raise errors.invalid_argument(
            f"Provided {name} not an integer or within integer range", name, raw
        )
    return min(int(raw), high)


async def list_parts(call: Call) -> Response:
    gateway = call.gateway
    bucket = await call.bucket_allowing(acl.WRITE)
    upload_id = upload_id_of(call)
    upload = await load_upload(gateway, bucket, call.key, upload_id)
    max_parts = _int(call, "max-parts", 1000, 1000)
    marker = _int(call, "part-number-marker", 0, MAX_PARTS)
    try:
        page, more = await gateway.backend.omap_page(
            layout.upload_name(upload_id),
            layout.part_key(marker) if marker else None,
            max_parts,
            "p.",
        )
    except Gone:
        raise errors.no_such_upload(upload_id) from None
    parts = [PartEntry.from_bytes(raw) for _, raw in page][:max_parts]
    truncated = more or len(page) > max_parts
    doc = xmldoc.Doc("ListPartsResult")
    doc.leaf("Bucket", bucket.name).leaf("Key", call.key).leaf("UploadId", upload_id)
    doc.owner("Initiator", upload.owner_id, upload.owner)
    doc.owner("Owner", upload.owner_id, upload.owner)
    doc.leaf("StorageClass", "STANDARD")
    doc.leaf("PartNumberMarker", marker)
    if parts:
        doc.leaf("NextPartNumberMarker", parts[-1].number)
    doc.leaf("MaxParts", max_parts).leaf("IsTruncated", truncated)
    if upload.checksum_algorithm:
        doc.leaf("ChecksumAlgorithm", upload.checksum_algorithm.upper())
    for part in parts:
        doc.open("Part").leaf("PartNumber", part.number)
        doc.leaf("LastModified", xmldoc.iso_time(part.mtime)).leaf("ETag", f'"{part.etag}"')
        doc.leaf("Size", part.size)
        if part.checksum:
            doc.leaf(f"Checksum{part.checksum[0].upper()}", part.checksum[1])
        doc.close()
    return xml(200, doc.to_bytes())


async def list_multipart_uploads(call: Call) -> Response:
    gateway = call.gateway
    bucket = await call.bucket_allowing(acl.READ)
    params = call.params
    url = url_encoding(params)
    max_uploads = _int(call, "max-uploads", 1000, 1000)
    prefix = params.get("prefix", "")
    delimiter = params.get("delimiter", "")
    key_marker = params.get("key-marker", "")
    id_marker = params.get("upload-id-marker", "")
    name = layout.uploads_name(bucket.id)
    uploads: list[tuple[str, UploadRef]] = []
    if key_marker and id_marker:
        try:
            raw = (await gateway.backend.omap_get(name, [key_marker])).get(key_marker)
        except Gone:
            raw = None
        if key_marker.startswith(prefix):
            uploads.extend(
                (key_marker, r) for r in layout.unpack_upload_refs(raw) if r.upload_id > id_marker
            )

    async def fetch(
        shard: int, after: str | None, limit: int
    ) -> tuple[list[tuple[str, bytes]], bool]:
        try:
            return await gateway.backend.omap_page(name, after, limit, prefix)
        except Gone:
            return [], False

    page = await listing.list_page(
        fetch,
        1,
        prefix=prefix,
        delimiter=delimiter,
        marker=key_marker or None,
        max_keys=max_uploads,
    )
    for key, raw in page.contents:
        uploads.extend((key, r) for r in layout.unpack_upload_refs(raw))
    truncated = page.truncated or len(uploads) + len(page.prefixes) > max_uploads
    room = max(0, max_uploads - len(page.prefixes))
    shown = uploads[:room]
    doc = xmldoc.Doc("ListMultipartUploadsResult")
    doc.leaf("Bucket", bucket.name).leaf("KeyMarker", enc(key_marker, url))
    doc.leaf("UploadIdMarker", id_marker)
    if truncated and shown:
        doc.leaf("NextKeyMarker", enc(shown[-1][0], url)).leaf(
            "NextUploadIdMarker", shown[-1][1].upload_id
        )
    elif truncated and page.last is not None:
        doc.leaf("NextKeyMarker", enc(page.last, url))
    if prefix:
        doc.leaf("Prefix", enc(prefix, url))
    if delimiter:
        doc.leaf("Delimiter", enc(delimiter, url))
    doc.leaf("MaxUploads", max_uploads).leaf("IsTruncated", truncated)
    if url:
        doc.leaf("EncodingType", "url")
    for key, ref in shown:
        doc.open("Upload").leaf("Key", enc(key, url)).leaf("UploadId", ref.upload_id)
        doc.owner("Initiator", ref.owner_id, ref.owner)
        doc.owner("Owner", ref.owner_id, ref.owner)
        doc.leaf("StorageClass", "STANDARD").leaf("Initiated", xmldoc.iso_time(ref.initiated))
        doc.close()
    for common in page.prefixes:
        doc.open("CommonPrefixes").leaf("Prefix", enc(common, url)).close()
    return xml(200, doc.to_bytes())
