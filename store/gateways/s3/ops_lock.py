"""Object lock operations: a bucket's configuration, and a version's retention and legal
hold (the rules are in :mod:`object_lock`)."""

from __future__ import annotations

import time

from store.gateways.s3 import errors, object_lock, versions
from store.gateways.s3.gateway import Call
from store.gateways.s3.layout import Bucket, Entry
from store.gateways.s3.ops_object_meta import update_version
from store.gateways.s3.ops_objects import find_version, requested_version, version_headers
from store.gateways.s3.responses import empty, xml
from store.gateways.web.server import Response


async def put_object_lock_configuration(call: Call) -> Response:
    bucket = await call.owned_bucket()
    rule = object_lock.parse_configuration(await call.small_body())
    if not bucket.object_lock and bucket.versioning != versions.ENABLED:
        raise errors.invalid_bucket_state(
            "Versioning must be 'Enabled' on the bucket to apply a Object Lock configuration"
        )
    await call.gateway.buckets.set_object_lock(bucket, rule)
    return empty(200)


async def get_object_lock_configuration(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if not bucket.object_lock:
        raise errors.not_configured(
            "ObjectLockConfigurationNotFoundError",
            "Object Lock configuration does not exist for this bucket",
            bucket.name,
        )
    return xml(200, object_lock.configuration_document(bucket.lock_rule))


async def _locked_version(call: Call) -> tuple[Bucket, Entry]:
    bucket = await call.owned_bucket()
    if not bucket.object_lock:
        raise object_lock.missing_configuration()
    return bucket, await find_version(call, bucket, call.key, requested_version(call))


async def put_object_retention(call: Call) -> Response:
    bucket, _ = await _locked_version(call)
    now = time.time()
    mode, until = object_lock.parse_retention(await call.small_body(), now)
    bypass = object_lock.bypass_requested(call.header)

    def allowed(entry: Entry) -> None:
        object_lock.check_retention_change(entry, mode, until, bypass, now)

    entry = await update_version(call, bucket, {"lock_mode": mode, "lock_until": until}, allowed)
    return empty(200, version_headers(bucket, entry))


async def get_object_retention(call: Call) -> Response:
    bucket, entry = await _locked_version(call)
    return xml(200, object_lock.retention_document(entry), version_headers(bucket, entry))


async def put_object_legal_hold(call: Call) -> Response:
    bucket, _ = await _locked_version(call)
    hold = object_lock.parse_legal_hold(await call.small_body())
    entry = await update_version(call, bucket, {"legal_hold": hold})
    return empty(200, version_headers(bucket, entry))


async def get_object_legal_hold(call: Call) -> Response:
    bucket, entry = await _locked_version(call)
    return xml(200, object_lock.legal_hold_document(entry), version_headers(bucket, entry))
