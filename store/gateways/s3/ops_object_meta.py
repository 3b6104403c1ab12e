"""What is kept about an object beside its data: ACLs, tags, attributes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from store.gateways.s3 import acl, acl_requests, attributes, conditions, errors, objects, xmldoc
from store.gateways.s3.gateway import Call
from store.gateways.s3.layout import Bucket, Entry
from store.gateways.s3.ops_objects import find_version, requested_version, version_headers
from store.gateways.s3.responses import empty, xml
from store.gateways.web.server import Response

ATTRIBUTES = frozenset({"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"})


async def get_object_attributes(call: Call) -> Response:
    bucket = await call.existing_bucket()
    version = requested_version(call)
    wanted = {
        a.strip() for a in (call.header("x-amz-object-attributes") or "").split(",") if a.strip()
    }
    if not wanted or not wanted <= ATTRIBUTES:
        raise errors.invalid_argument(
            "Invalid attribute name specified.", "x-amz-object-attributes", ",".join(sorted(wanted))
        )
    entry = await find_version(call, bucket, call.key, version)
    doc = xmldoc.Doc("GetObjectAttributesResponse")
    if "ETag" in wanted:
        doc.leaf("ETag", entry.etag)
    if "Checksum" in wanted and entry.checksum:
        doc.open("Checksum").leaf(f"Checksum{entry.checksum[0].upper()}", entry.checksum[1])
        doc.leaf("ChecksumType", entry.checksum_type).close()
    if "ObjectParts" in wanted and entry.parts:
        parts = await objects.load_manifest(call.gateway.backend, entry)
        marker_raw = call.header("x-amz-part-number-marker") or "0"
        max_raw = call.header("x-amz-max-parts") or "1000"
        if not marker_raw.isdigit() or not max_raw.isdigit():
            raise errors.invalid_argument("Invalid part number marker or max parts")
        marker, max_parts = int(marker_raw), min(int(max_raw), 1000)
        after = [p for p in parts if p.number > marker]
        shown = after[:max_parts]
        doc.open("ObjectParts").leaf("PartsCount", len(parts)).leaf("PartNumberMarker", marker)
        if shown:
            doc.leaf("NextPartNumberMarker", shown[-1].number)
        doc.leaf("MaxParts", max_parts).leaf("IsTruncated", len(after) > len(shown))
        for part in shown:
            doc.open("Part").leaf("PartNumber", part.number).leaf("Size", part.size)
            if part.checksum and entry.checksum:
                doc.leaf(f"Checksum{entry.checksum[0].upper()}", part.checksum)
            doc.close()
        doc.close()
    if "StorageClass" in wanted:
        doc.leaf("StorageClass", "STANDARD")
    if "ObjectSize" in wanted:
        doc.leaf("ObjectSize", entry.size)
    headers = [("Last-Modified", conditions.http_date(entry.mtime))]
    return xml(200, doc.to_bytes(), headers + version_headers(bucket, entry))


async def _existing(call: Call, permission: str) -> tuple[Bucket, Entry]:
    """The object (or its version named by ``versionId``) the request is about, whose
    ACL must grant the caller ``permission``."""
    bucket = await call.existing_bucket()
    version = requested_version(call)
    return bucket, await find_version(call, bucket, call.key, version, permission)


async def update_version(
    call: Call,
    bucket: Bucket,
    change: dict[str, object],
    check: Callable[[Entry], None] | None = None,
) -> Entry:
    """Change fields of the object (or of the version ``versionId`` names), atomically;
    ``check`` may refuse (by raising) once it sees the version."""
    version = requested_version(call)

    def modify(current: Entry | None) -> Entry:
        if current is None:
            if version is None:
                raise errors.no_such_key(call.key)
            raise errors.no_such_version(call.key, version)
        if check is not None:
            check(current)
        return replace(current, **change)  # type: ignore[arg-type]

    return await call.gateway.index.update(bucket, call.key, modify, version)


async def get_object_acl(call: Call) -> Response:
    bucket, entry = await _existing(call, acl.READ_ACP)
    document = acl.policy_document(
        entry.owner_id, entry.owner, entry.acl, (bucket.owner_id, bucket.owner), entry.grants
    )
    return xml(200, document, version_headers(bucket, entry))


async def put_object_acl(call: Call) -> Response:
    bucket, entry = await _existing(call, acl.WRITE_ACP)
    requested = await acl_requests.for_put(call, entry.owner_id, bucket=False)
    acl.check_not_blocked(bucket.public_block, requested.canned, requested.grants)
    change: dict[str, object] = {"acl": requested.canned, "grants": requested.grants}
    entry = await update_version(call, bucket, change)
    return empty(200, version_headers(bucket, entry))


async def get_object_tagging(call: Call) -> Response:
    bucket, entry = await _existing(call, acl.READ)
    doc = xmldoc.Doc("Tagging").open("TagSet")
    for key, value in sorted(entry.tags.items()):
        doc.open("Tag").leaf("Key", key).leaf("Value", value).close()
    return xml(200, doc.to_bytes(), version_headers(bucket, entry))


async def read_tag_set(call: Call, *, limit: int = attributes.MAX_TAGS) -> dict[str, str]:
    """The <Tagging><TagSet><Tag>... document of a request body, validated."""
    return parse_tag_set(await call.small_body(), limit=limit)


def parse_tag_set(body: bytes, *, limit: int = attributes.MAX_TAGS) -> dict[str, str]:
    """The tags of a <Tagging><TagSet><Tag>... document, validated."""
    root = xmldoc.parse(body, "Tagging")
    pairs: list[tuple[str, str]] = []
    for tag_set in xmldoc.children(root, "TagSet"):
        for tag in xmldoc.children(tag_set, "Tag"):
            key, value = xmldoc.child_text(tag, "Key"), xmldoc.child_text(tag, "Value")
            if key is None or value is None:
                raise errors.malformed_xml()
            pairs.append((key, value))
    return attributes.validate_tags(pairs, limit=limit)


async def put_object_tagging(call: Call) -> Response:
    bucket, _ = await _existing(call, acl.WRITE_ACP)
    tags = await read_tag_set(call)
    entry = await update_version(call, bucket, {"tags": tags})
    return empty(200, version_headers(bucket, entry))


async def delete_object_tagging(call: Call) -> Response:
    bucket, _ = await _existing(call, acl.WRITE_ACP)
    entry = await update_version(call, bucket, {"tags": {}})
    return empty(204, version_headers(bucket, entry))
