"""CompleteMultipartUpload: stitching the parts into an object, with its checksums.

The parts named by the request must be uploaded parts with the same ETags (and the same
checksums, when the request gives them), in ascending order, all but the last at least
5 MiB. The object's ETag is the MD5 of the parts' MD5s with ``-N``. When the upload chose
a checksum algorithm, the object's checksum is either COMPOSITE (the digest of the parts'
digests, ``-N``) or FULL_OBJECT (the CRC of all the bytes, combined from the parts' CRCs
without reading them), and a value the client sends for it is checked.

A completed upload leaves a ``done`` record behind for a while, so that a client that
retries a completion whose answer it lost is answered the same way, as S3 does.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from store.gateways.s3 import acl, checksums, conditions, errors, layout, xmldoc
from store.gateways.s3.backend import Gone
from store.gateways.s3.gateway import Call, Gateway
from store.gateways.s3.layout import Bucket, Entry, Garbage, Part, PartEntry, Upload
from store.gateways.s3.multipart import (
    COMPLETING,
    MAX_PARTS,
    MIN_PART_SIZE,
    forget_upload,
    load_upload,
    part_entries,
    upload_id_of,
)
from store.gateways.s3.ops_objects import location_of, version_headers
from store.gateways.s3.responses import xml
from store.gateways.web.server import Response

MAX_COMPLETE_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Requested:
    number: int
    etag: str
    checksums: dict[str, str]  # algorithm -> base64, as the request lists them


def requested_parts(body: bytes) -> list[Requested]:
    root = xmldoc.parse(body, "CompleteMultipartUpload")
    requested: list[Requested] = []
    for item in xmldoc.children(root, "Part"):
        number = (xmldoc.child_text(item, "PartNumber") or "").strip()
        etag = xmldoc.child_text(item, "ETag")
        if not number.isdigit() or etag is None:
            raise errors.malformed_xml()
        given = {}
        for algorithm in checksums.ALGORITHMS:
            value = xmldoc.child_text(item, f"Checksum{algorithm.upper()}")
            if value is not None:
                given[algorithm] = value.strip()
        requested.append(Requested(int(number), etag.strip().strip('"').lower(), given))
    if not requested or len(requested) > MAX_PARTS:
        raise errors.malformed_xml()
    for a, b in itertools.pairwise(requested):
        if b.number <= a.number:
            raise errors.invalid_part_order()
    return requested


def choose_parts(requested: list[Requested], uploaded: list[PartEntry]) -> list[PartEntry]:
    by_number = {p.number: p for p in uploaded}
    chosen: list[PartEntry] = []
    for want in requested:
        part = by_number.get(want.number)
        if part is None or part.etag != want.etag:
            raise errors.invalid_part()
        for algorithm, value in want.checksums.items():
            if part.checksum is None or part.checksum != (algorithm, value):
                raise errors.invalid_part()
        chosen.append(part)
    for part in chosen[:-1]:
        if part.size < MIN_PART_SIZE:
            raise errors.entity_too_small(
                part.size, MIN_PART_SIZE, ETag=f'"{part.etag}"', PartNumber=str(part.number)
            )
    return chosen


def object_checksum(algorithm: str, checksum_type: str, parts: list[PartEntry]) -> str:
    """The object's checksum value (base64; COMPOSITE ones end in ``-N``)."""
    digests = []
    for part in parts:
        raw = None
        if part.checksum is not None and part.checksum[0] == algorithm:
            raw = checksums.decode_digest(algorithm, part.checksum[1])
        if raw is None:
            raise errors.invalid_request(
                f"The upload was created using the {algorithm} checksum algorithm, but part "
                f"{part.number} has no {algorithm} checksum."
            )
        digests.append((raw, part.size))
    if checksum_type == "COMPOSITE":
        hasher = checksums.new_hasher(algorithm)
        hasher.update(b"".join(raw for raw, _ in digests))
        return f"{base64.b64encode(hasher.digest()).decode()}-{len(parts)}"
    combined, _ = digests[0]
    for raw, size in digests[1:]:
        combined = checksums.crc_combine(algorithm, combined, raw, size)
    return base64.b64encode(combined).decode()


def check_declared_checksum(call: Call, upload: Upload, value: str | None) -> None:
    """Compare the object checksum the request declares (if any) with ours."""
    for name, given in call.headers:
        if not name.startswith("x-amz-checksum-") or name in (
            "x-amz-checksum-type",
            "x-amz-checksum-mode",
            "x-amz-checksum-algorithm",
        ):
            continue
        algorithm = name[len("x-amz-checksum-") :]
        if algorithm not in checksums.ALGORITHMS or upload.checksum_algorithm != algorithm:
            raise errors.invalid_request(
                f"The upload was created using the {upload.checksum_algorithm or 'null'} "
                f"checksum algorithm, not {algorithm}."
            )
        if value is None or given.strip().split("-")[0] != value.split("-")[0]:
            raise errors.bad_digest(
                f"The {algorithm.upper()} you specified did not match the calculated checksum."
            )
    declared_type = call.header("x-amz-checksum-type")
    if declared_type is not None and declared_type.strip().upper() != (upload.checksum_type or ""):
        raise errors.invalid_request("The x-amz-checksum-type does not match the upload's.")


def result_document(call: Call, bucket: Bucket, entry: Entry) -> Response:
    doc = xmldoc.Doc("CompleteMultipartUploadResult")
    host = call.header("host") or "localhost"
    doc.leaf("Location", f"{call.request.scheme}://{host}{location_of(bucket.name, call.key)}")
    doc.leaf("Bucket", bucket.name).leaf("Key", call.key).leaf("ETag", entry.quoted_etag)
    if entry.checksum:
        doc.leaf(f"Checksum{entry.checksum[0].upper()}", entry.checksum[1])
        doc.leaf("ChecksumType", entry.checksum_type)
    return xml(200, doc.to_bytes(), version_headers(bucket, entry, written=True))


async def _already_completed(call: Call, bucket: Bucket, upload_id: str) -> Response | None:
    """The answer to a completion repeated after it succeeded, or None."""
    gateway = call.gateway
    try:
        values = await gateway.backend.omap_get(layout.upload_name(upload_id), ["done"])
    except Gone:
        raise errors.no_such_upload(upload_id) from None
    raw = values.get("done")
    if raw is None:
        return None
    record = layout.unpack(raw)
    if record.get("bi") != bucket.id or record.get("k") != call.key:
        raise errors.no_such_upload(upload_id)
    entry = await gateway.index.get(bucket, call.key)
    if entry is None or entry.head != record.get("h"):
        raise errors.no_such_upload(upload_id)
    return result_document(call, bucket, entry)


async def complete_multipart_upload(call: Call) -> Response:
    gateway = call.gateway
    bucket = await call.bucket_allowing(acl.WRITE)
    upload_id = upload_id_of(call)
    repeated = await _already_completed(call, bucket, upload_id)
    if repeated is not None:
        return repeated
    upload = await load_upload(gateway, bucket, call.key, upload_id)
    payload = call.payload(object_checksums=False)
    body = await payload.read_all(MAX_COMPLETE_BODY)
    payload.finish()
    requested = requested_parts(body)
    name = layout.upload_name(upload_id)

    def mark(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], None]:
        if "meta" not in current or "state" in current:
            raise errors.no_such_upload(upload_id)
        return {"state": COMPLETING}, None

    try:
        await gateway.backend.compare_and_set(name, ["meta", "state"], mark, must_exist=True)
    except Gone:
        raise errors.no_such_upload(upload_id) from None
    # From here on no part is replaced without the upload seeing "completing", so the parts
    # read now are the ones the object will own.
    try:
        uploaded, _ = await part_entries(gateway, upload_id)
        chosen = choose_parts(requested, uploaded)
        size = sum(p.size for p in chosen)
        declared_size = call.header("x-amz-mp-object-size")
        if declared_size is not None and declared_size.strip() != str(size):
            raise errors.invalid_request(
                "The provided 'x-amz-mp-object-size' header value does not match what was computed."
            )
        value = None
        if upload.checksum_algorithm is not None and upload.checksum_type is not None:
            value = object_checksum(upload.checksum_algorithm, upload.checksum_type, chosen)
        check_declared_checksum(call, upload, value)
        entry = await _publish(call, bucket, upload, chosen, value)
    except BaseException:
        with trio.CancelScope(shield=True):
            await gateway.backend.execute(name, [["omap_rm", ["state"]]])
        raise
    await _retire_upload(gateway, bucket, call.key, upload_id, chosen, entry)
    return result_document(call, bucket, entry)


async def _publish(
    call: Call,
    bucket: Bucket,
    upload: Upload,
    chosen: list[PartEntry],
    checksum_value: str | None,
) -> Entry:
    gateway, key = call.gateway, call.key
    digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen)).hexdigest()
    manifest = layout.pack_manifest(
        [
            Part(p.number, p.head or "", p.size, p.etag, p.checksum[1] if p.checksum else None)
            for p in chosen
        ]
    )
    head = layout.data_name(bucket.id)
    checksum = None
    if checksum_value is not None and upload.checksum_algorithm is not None:
        checksum = (upload.checksum_algorithm, checksum_value)
    entry = Entry(
        size=sum(p.size for p in chosen),
        etag=f"{digest}-{len(chosen)}",
        mtime=time.time(),
        owner=upload.owner,
        owner_id=upload.owner_id,
        head=head,
        parts=len(chosen),
        manifest_size=len(manifest),
        headers=upload.headers,
        meta=upload.meta,
        checksum=checksum,
        acl=upload.acl,
        grants=upload.grants,
        tags=upload.tags,
        checksum_type=upload.checksum_type or "FULL_OBJECT",
        lock_mode=upload.lock_mode,
        lock_until=upload.lock_until,
        legal_hold=upload.legal_hold,
    )
    try:
        await gateway.backend.write_data(head, manifest)
        if call.header("if-match") is not None or call.header("if-none-match") is not None:
            # Conditional completion (If-Match / If-None-Match), like a conditional PUT.
            entry = await gateway.index.publish(
                bucket,
                key,
                entry,
                lambda current: conditions.check_put(
                    call.header, key, current.etag if current else None
                ),
            )
        else:
            entry = await gateway.index.publish(bucket, key, entry)
    except BaseException:
        with trio.CancelScope(shield=True):
            await gateway.backend.delete(head)
        raise
    return entry


async def _retire_upload(
    gateway: Gateway,
    bucket: Bucket,
    key: str,
    upload_id: str,
    chosen: list[PartEntry],
    entry: Entry,
) -> None:
    """Free the parts the object does not own; leave a ``done`` record, queued for GC."""
    owned = {(p.number, p.head) for p in chosen}
    leftovers, _ = await part_entries(gateway, upload_id)
    for part in leftovers:
        if (part.number, part.head) not in owned:
            await gateway.collector.discard(Garbage.of_part(part))
    name = layout.upload_name(upload_id)
    done = layout.pack({"bi": bucket.id, "k": key, "h": entry.head})
    await gateway.backend.execute(name, [["omap_set", {"done": done}]])
    # The record is one small object: queued like a one-stripe data object.
    await gateway.collector.discard(Garbage(name, 1))
    await forget_upload(gateway, bucket.id, key, upload_id)
