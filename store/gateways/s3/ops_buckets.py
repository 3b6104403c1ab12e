"""Service and bucket operations: ListBuckets, CreateBucket ... GetBucketAcl."""

from __future__ import annotations

from store.gateways.s3 import acl, acl_requests, cors, errors, versions, xmldoc
from store.gateways.s3.access import PublicAccessBlock
from store.gateways.s3.gateway import Call
from store.gateways.s3.layout import Bucket, Entry
from store.gateways.s3.listing import PAST_EVERYTHING, Page
from store.gateways.s3.listing_params import (
    decode_token,
    enc,
    encode_token,
    int_param,
    requested_max_keys,
    url_encoding,
)
from store.gateways.s3.multipart import abort_all_uploads
from store.gateways.s3.ops_object_meta import read_tag_set
from store.gateways.s3.responses import empty, xml
from store.gateways.s3.routing import valid_bucket_name
from store.gateways.web.server import Response

MAX_CONFIG_BODY = 64 * 1024


async def list_buckets(call: Call) -> Response:
    if call.anonymous:
        raise errors.access_denied()
    params = call.params
    prefix = params.get("prefix", "")
    max_buckets = int_param(params, "max-buckets", 1, 10_000, default=10_000)
    after = params.get("continuation-token")
    if after is not None:
        after = decode_token(after, "continuation-token")
    region_filter = params.get("bucket-region")
    mine = sorted(
        (
            b
            for b in await call.gateway.buckets.all()
            if b.owner_id == call.user.id
            and b.name.startswith(prefix)
            and (after is None or b.name > after)
            and (region_filter is None or b.region == region_filter)
        ),
        key=lambda b: b.name,
    )
    page, more = mine[:max_buckets], len(mine) > max_buckets
    doc = xmldoc.Doc("ListAllMyBucketsResult")
    doc.owner("Owner", call.user.id, call.user.name)
    doc.open("Buckets")
    for bucket in page:
        doc.open("Bucket")
        doc.leaf("Name", bucket.name)
        doc.leaf("CreationDate", xmldoc.iso_time(bucket.created))
        doc.leaf("BucketRegion", bucket.region)
        doc.close()
    doc.close()
    if more and page:
        doc.leaf("ContinuationToken", encode_token(page[-1].name))
    if "prefix" in params:
        doc.leaf("Prefix", prefix)
    return xml(200, doc.to_bytes())


async def create_bucket(call: Call) -> Response:
    if call.anonymous:
        raise errors.access_denied()
    name = call.bucket_name
    if not valid_bucket_name(name):
        raise errors.invalid_bucket_name(name)
    requested = await acl_requests.from_headers(call, call.user.id, bucket=True)
    locked = (call.header("x-amz-bucket-object-lock-enabled") or "").strip().lower() == "true"
    body = await call.payload().read_all(MAX_CONFIG_BODY)
    region = call.gateway.settings.region
    if body.strip():
        root = xmldoc.parse(body, "CreateBucketConfiguration")
        constraint = xmldoc.child_text(root, "LocationConstraint")
        for unsupported in ("Location", "Bucket"):
            if xmldoc.child_text(root, unsupported) is not None:
                raise errors.not_implemented(unsupported)
        if constraint is not None and constraint != region:
            if (
                constraint
                and constraint != "us-east-1"
                and not constraint.replace("-", "").isalnum()
            ):
                raise errors.S3Error(
                    "InvalidLocationConstraint",
                    400,
                    "The specified location-constraint is not valid",
                    {"LocationConstraint": constraint},
                )
            raise errors.S3Error(
                "IllegalLocationConstraintException",
                400,
                f"The {constraint or 'unspecified'} location constraint is incompatible for "
                "the region specific endpoint this request was sent to.",
            )
    try:
        await call.gateway.buckets.create(
            name,
            call.user,
            region=region,
            acl=requested.canned,
            grants=requested.grants,
            shards=call.gateway.settings.index_shards,
            object_lock=locked,
        )
    except errors.S3Error as exc:
        # S3's legacy rule in us-east-1: creating a bucket you own again succeeds (and
        # sets its ACL); every other region answers BucketAlreadyOwnedByYou.
        if exc.code != "BucketAlreadyOwnedByYou" or region != "us-east-1":
            raise
        bucket = await call.owned_bucket(name)
        if (bucket.acl, bucket.grants) != (requested.canned, requested.grants):
            await call.gateway.buckets.set_acl(bucket, requested.canned, requested.grants)
    return empty(200, [("Location", f"/{name}")])


async def head_bucket(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.READ)
    return empty(200, [("x-amz-bucket-region", bucket.region)])


async def delete_bucket(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if not await call.gateway.index.is_empty(bucket):
        raise errors.bucket_not_empty(bucket.name)
    await abort_all_uploads(call.gateway, bucket)
    await call.gateway.buckets.delete(bucket)
    return empty(204)


async def get_bucket_location(call: Call) -> Response:
    bucket = await call.owned_bucket()
    region = "" if bucket.region == "us-east-1" else bucket.region
    body = (
        f'{xmldoc.DECLARATION}<LocationConstraint xmlns="{xmldoc.NAMESPACE}">'
        f"{xmldoc.escape(region)}</LocationConstraint>"
    )
    return xml(200, body.encode())


async def get_bucket_versioning(call: Call) -> Response:
    bucket = await call.owned_bucket()
    doc = xmldoc.Doc("VersioningConfiguration")
    if bucket.versioning:
        doc.leaf("Status", bucket.versioning)
    return xml(200, doc.to_bytes())


async def put_bucket_versioning(call: Call) -> Response:
    bucket = await call.owned_bucket()
    root = xmldoc.parse(await call.small_body(MAX_CONFIG_BODY), "VersioningConfiguration")
    status = xmldoc.child_text(root, "Status")
    mfa = xmldoc.child_text(root, "MfaDelete")
    if mfa is not None and mfa not in ("Enabled", "Disabled"):
        raise errors.malformed_xml()
    if mfa == "Enabled":
        raise errors.not_implemented("MfaDelete")
    if status is None:
        return empty(200)
    if status not in (versions.ENABLED, versions.SUSPENDED):
        raise errors.malformed_xml()
    if bucket.object_lock and status != versions.ENABLED:
        raise errors.invalid_bucket_state(
            "An Object Lock configuration is present on this bucket, so the versioning "
            "state cannot be changed."
        )
    if status != bucket.versioning:
        await call.gateway.buckets.set_versioning(bucket, status)
    return empty(200)


async def get_bucket_acl(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.READ_ACP)
    document = acl.policy_document(bucket.owner_id, bucket.owner, bucket.acl, grants=bucket.grants)
    return xml(200, document)


async def put_bucket_acl(call: Call) -> Response:
    bucket = await call.bucket_allowing(acl.WRITE_ACP)
    requested = await acl_requests.for_put(call, bucket.owner_id, bucket=True)
    acl.check_not_blocked(bucket.public_block, requested.canned, requested.grants)
    await call.gateway.buckets.set_acl(bucket, requested.canned, requested.grants)
    return empty(200)


_BLOCK_FIELDS = (
    "BlockPublicAcls",
    "IgnorePublicAcls",
    "BlockPublicPolicy",
    "RestrictPublicBuckets",
)


async def put_public_access_block(call: Call) -> Response:
    bucket = await call.owned_bucket()
    body = await call.small_body(MAX_CONFIG_BODY)
    root = xmldoc.parse(body, "PublicAccessBlockConfiguration")
    flags = []
    for name in _BLOCK_FIELDS:
        value = (xmldoc.child_text(root, name) or "false").strip().lower()
        if value not in ("true", "false"):
            raise errors.malformed_xml()
        flags.append(value == "true")
    await call.gateway.buckets.set_public_block(bucket, PublicAccessBlock(*flags))
    return empty(200)


async def get_public_access_block(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if bucket.public_block is None:
        raise errors.not_configured(
            "NoSuchPublicAccessBlockConfiguration",
            "The public access block configuration was not found",
            bucket.name,
        )
    doc = xmldoc.Doc("PublicAccessBlockConfiguration")
    for name, flag in zip(_BLOCK_FIELDS, bucket.public_block.to_wire(), strict=True):
        doc.leaf(name, flag)
    return xml(200, doc.to_bytes())


async def delete_public_access_block(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if bucket.public_block is not None:
        await call.gateway.buckets.set_public_block(bucket, None)
    return empty(204)


async def get_bucket_tagging(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if not bucket.tags:
        raise errors.not_configured("NoSuchTagSet", "The TagSet does not exist", bucket.name)
    doc = xmldoc.Doc("Tagging").open("TagSet")
    for key, value in sorted(bucket.tags.items()):
        doc.open("Tag").leaf("Key", key).leaf("Value", value).close()
    return xml(200, doc.to_bytes())


async def put_bucket_tagging(call: Call) -> Response:
    bucket = await call.owned_bucket()
    tags = await read_tag_set(call, limit=50)
    await call.gateway.buckets.set_tags(bucket, tags)
    return empty(204)


async def delete_bucket_tagging(call: Call) -> Response:
    bucket = await call.owned_bucket()
    await call.gateway.buckets.set_tags(bucket, {})
    return empty(204)


async def get_bucket_cors(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if not bucket.cors:
        raise errors.not_configured(
            "NoSuchCORSConfiguration", "The CORS configuration does not exist", bucket.name
        )
    return xml(200, cors.configuration_document(bucket.cors))


async def put_bucket_cors(call: Call) -> Response:
    bucket = await call.owned_bucket()
    rules = cors.parse_configuration(await call.small_body(MAX_CONFIG_BODY))
    await call.gateway.buckets.set_cors(bucket, rules)
    return empty(200)


async def delete_bucket_cors(call: Call) -> Response:
    bucket = await call.owned_bucket()
    await call.gateway.buckets.set_cors(bucket, ())
    return empty(204)


_NOT_CONFIGURED = {
    "GetBucketEncryption": (
        "ServerSideEncryptionConfigurationNotFoundError",
        "The server side encryption configuration was not found",
    ),
    "GetBucketLifecycleConfiguration": (
        "NoSuchLifecycleConfiguration",
        "The lifecycle configuration does not exist",
    ),
    "GetBucketOwnershipControls": (
        "OwnershipControlsNotFoundError",
        "The bucket ownership controls were not found",
    ),
    "GetBucketReplication": (
        "ReplicationConfigurationNotFoundError",
        "The replication configuration was not found",
    ),
    "GetBucketWebsite": (
        "NoSuchWebsiteConfiguration",
        "The specified bucket does not have a website configuration",
    ),
}
_EMPTY_CONFIG = {
    "GetBucketLogging": "BucketLoggingStatus",
    "GetBucketNotificationConfiguration": "NotificationConfiguration",
    "GetBucketAccelerateConfiguration": "AccelerateConfiguration",
}


async def get_unconfigured(call: Call) -> Response:
    """A bucket configuration this gateway cannot hold: S3's answer for "none set"."""
    bucket = await call.owned_bucket()
    operation = call.route.operation
    if operation in _NOT_CONFIGURED:
        code, message = _NOT_CONFIGURED[operation]
        raise errors.not_configured(code, message, bucket.name)
    if operation == "GetBucketRequestPayment":
        doc = xmldoc.Doc("RequestPaymentConfiguration").leaf("Payer", "BucketOwner")
        return xml(200, doc.to_bytes())
    return xml(200, xmldoc.Doc(_EMPTY_CONFIG[operation]).to_bytes())


async def delete_unconfigured(call: Call) -> Response:
    """Deleting a configuration that cannot exist: done, as S3 answers for "none set"."""
    await call.owned_bucket()
    return empty(204)


# --- listings -------------------------------------------------------------------------------


class _Listing:
    """One ListObjects, ListObjectsV2 or ListObjectVersions request: what the three read
    alike from it (after checking that the caller owns the bucket), and how each one's
    answer ends."""

    def __init__(self, call: Call, bucket: Bucket) -> None:
        self.call = call
        self.bucket = bucket
        params = call.params
        self.url = url_encoding(params)
        self.requested = requested_max_keys(params)  # echoed as MaxKeys
        self.prefix = params.get("prefix", "")
        self.delimiter = params.get("delimiter", "")

    @classmethod
    async def of(cls, call: Call) -> _Listing:
        return cls(call, await call.bucket_allowing(acl.READ))

    def enc(self, text: str) -> str:
        return enc(text, self.url)

    async def page(self, marker: str | None) -> Page:
        return await self.call.gateway.index.page(
            self.bucket,
            prefix=self.prefix,
            delimiter=self.delimiter,
            marker=marker,
            max_keys=min(self.requested, 1000),
        )

    def answer(self, doc: xmldoc.Doc, page: Page, *, owner: bool) -> Response:
        """The encoding, the page's keys and its common prefixes, after what `doc` holds."""
        if self.url:
            doc.leaf("EncodingType", "url")
        for key, raw in page.contents:
            _contents(doc, key, raw, self.url, owner=owner)
        return self.prefixes(doc, page)

    def prefixes(self, doc: xmldoc.Doc, page: Page) -> Response:
        for common in page.prefixes:
            doc.open("CommonPrefixes").leaf("Prefix", self.enc(common)).close()
        return xml(200, doc.to_bytes())


def _contents(doc: xmldoc.Doc, key: str, raw: bytes, url: bool, owner: bool) -> None:
    entry = Entry.from_bytes(raw)
    doc.open("Contents")
    doc.leaf("Key", enc(key, url))
    doc.leaf("LastModified", xmldoc.iso_time(entry.mtime))
    doc.leaf("ETag", entry.quoted_etag)
    if entry.checksum:
        doc.leaf("ChecksumAlgorithm", entry.checksum[0].upper())
    doc.leaf("Size", entry.size)
    if owner:
        doc.owner("Owner", entry.owner_id, entry.owner)
    doc.leaf("StorageClass", "STANDARD")
    doc.close()


def _version(doc: xmldoc.Doc, key: str, entry: Entry, url: bool, latest: bool) -> None:
    doc.open("DeleteMarker" if entry.delete_marker else "Version")
    doc.leaf("Key", enc(key, url))
    doc.leaf("VersionId", versions.version_id(entry)).leaf("IsLatest", latest)
    doc.leaf("LastModified", xmldoc.iso_time(entry.mtime))
    if not entry.delete_marker:
        doc.leaf("ETag", entry.quoted_etag).leaf("Size", entry.size)
    doc.owner("Owner", entry.owner_id, entry.owner)
    if not entry.delete_marker:
        doc.leaf("StorageClass", "STANDARD")
    doc.close()


async def list_objects(call: Call) -> Response:
    listing = await _Listing.of(call)
    marker = call.params.get("marker", "")
    page = await listing.page(marker or None)
    doc = xmldoc.Doc("ListBucketResult")
    # ListObjects (v1) encodes keys, markers and the delimiter, but not the prefix.
    doc.leaf("Name", listing.bucket.name).leaf("Prefix", listing.prefix)
    doc.leaf("Marker", listing.enc(marker))
    if page.truncated and listing.delimiter and page.last is not None:
        doc.leaf("NextMarker", listing.enc(page.last))
    doc.leaf("MaxKeys", listing.requested)
    if listing.delimiter:
        doc.leaf("Delimiter", listing.enc(listing.delimiter))
    doc.leaf("IsTruncated", page.truncated)
    return listing.answer(doc, page, owner=True)


async def list_objects_v2(call: Call) -> Response:
    listing = await _Listing.of(call)
    params = call.params
    start_after = params.get("start-after")
    token = params.get("continuation-token")
    marker = start_after or None
    if token:  # an empty token is no token
        marker = decode_token(token, "continuation-token")
    fetch_owner = params.get("fetch-owner", "").lower() == "true"
    page = await listing.page(marker)
    doc = xmldoc.Doc("ListBucketResult")
    doc.leaf("Name", listing.bucket.name).leaf("Prefix", listing.enc(listing.prefix))
    if listing.delimiter:
        doc.leaf("Delimiter", listing.enc(listing.delimiter))
    doc.leaf("MaxKeys", listing.requested)
    doc.leaf("KeyCount", len(page.contents) + len(page.prefixes))
    doc.leaf("IsTruncated", page.truncated)
    if token is not None:
        doc.leaf("ContinuationToken", token)
    if page.truncated and page.last is not None:
        doc.leaf("NextContinuationToken", encode_token(page.last))
    if start_after is not None:
        doc.leaf("StartAfter", listing.enc(start_after))
    return listing.answer(doc, page, owner=fetch_owner)


async def list_object_versions(call: Call) -> Response:
    listing = await _Listing.of(call)
    bucket = listing.bucket
    key_marker = call.params.get("key-marker", "")
    version_marker = call.params.get("version-id-marker") or None
    if version_marker and not key_marker:
        raise errors.invalid_argument(
            "A version-id marker cannot be specified without a key marker.",
            "version-id-marker",
            version_marker,
        )
    if version_marker is not None and not versions.is_version_id(version_marker):
        raise errors.invalid_argument(
            "Invalid version id specified", "version-id-marker", version_marker
        )
    # Versions are listed by name: "<key>\0<sk>" (a record) or "<key>\0" (an unrecorded
    # null version, which is always its key's newest).
    after = None
    if key_marker and version_marker is None:
        after = f"{key_marker}\x00{PAST_EVERYTHING}"
    elif key_marker and version_marker == versions.NULL:
        after = f"{key_marker}\x00{await call.gateway.index.null_sk(bucket, key_marker) or ''}"
    elif key_marker:
        after = f"{key_marker}\x00{version_marker}"
    page = await call.gateway.index.version_page(
        bucket,
        prefix=listing.prefix,
        delimiter=listing.delimiter,
        after=after,
        max_keys=min(listing.requested, 1000),
    )
    doc = xmldoc.Doc("ListVersionsResult")
    doc.leaf("Name", bucket.name).leaf("Prefix", listing.enc(listing.prefix))
    doc.leaf("KeyMarker", listing.enc(key_marker)).leaf("VersionIdMarker", version_marker or "")
    last_listed = page.contents[-1][0] if page.contents else None
    if page.truncated and page.last is not None:
        if page.last == last_listed:
            key, _, _ = page.last.partition("\x00")
            entry = Entry.from_bytes(page.contents[-1][1])
            doc.leaf("NextKeyMarker", listing.enc(key))
            doc.leaf("NextVersionIdMarker", versions.version_id(entry))
        else:
            doc.leaf("NextKeyMarker", listing.enc(page.last))
    doc.leaf("MaxKeys", listing.requested)
    if listing.delimiter:
        doc.leaf("Delimiter", listing.enc(listing.delimiter))
    doc.leaf("IsTruncated", page.truncated)
    if listing.url:
        doc.leaf("EncodingType", "url")
    # A key's first version is its latest, unless this page goes on from an earlier one.
    previous = key_marker if version_marker is not None else None
    for name, raw in page.contents:
        key, _, _ = name.partition("\x00")
        _version(doc, key, Entry.from_bytes(raw), listing.url, latest=key != previous)
        previous = key
    return listing.prefixes(doc, page)
