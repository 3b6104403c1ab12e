"""Object lock operations: a bucket's configuration, and a version's retention and legal
hold (the rules are in :mod:`object_lock`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from store.gateways.s3 import errors, object_lock, versions
from store.gateways.s3.gateway import Call
from store.gateways.s3.layout import Bucket, Entry
from store.gateways.s3.ops_objects import find_version, requested_version, version_headers
from store.gateways.s3.responses import empty, xml
from store.gateways.web.server import Response

MAX_BODY = 64 * 1024


def invalid_bucket_state(message: str) -> errors.S3Error:
    return errors.S3Error("InvalidBucketState", 409, message)


async def _body(call: Call) -> bytes:
    payload = call.payload()
    body = await payload.read_all(MAX_BODY)
    payload.finish()
    return body


async def put_object_lock_configuration(call: Call) -> Response:
    bucket = await call.owned_bucket()
    rule = object_lock.parse_configuration(await _body(call))
    if not bucket.object_lock and bucket.versioning != versions.ENABLED:
        raise invalid_bucket_state(
            "Versioning must be 'Enabled' on the bucket to apply a Object Lock configuration"
        )
    await call.gateway.buckets.set_object_lock(bucket, rule)
    return empty(200)


async def get_object_lock_configuration(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if not bucket.object_lock:
        raise errors.S3Error(
            "ObjectLockConfigurationNotFoundError",
            404,
            "Object Lock configuration does not exist for this bucket",
            {"BucketName": bucket.name},
        )
    return xml(200, object_lock.configuration_document(bucket.lock_rule))


async def _locked_version(call: Call) -> tuple[Bucket, Entry]:
    bucket = await call.owned_bucket()
    if not bucket.object_lock:
        raise object_lock.missing_configuration()
    return bucket, await find_version(call, bucket, call.key, requested_version(call))


async def _change(
    call: Call,
    bucket: Bucket,
    change: dict[str, object],
    check: Callable[[Entry], None] | None,
) -> Entry:
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


async def put_object_retention(call: Call) -> Response:
    bucket, _ = await _locked_version(call)
    now = time.time()
    mode, until = object_lock.parse_retention(await _body(call), now)
    bypass = object_lock.bypass_requested(call.header)

    def allowed(entry: Entry) -> None:
        object_lock.check_retention_change(entry, mode, until, bypass, now)

    entry = await _change(call, bucket, {"lock_mode": mode, "lock_until": until}, allowed)
    return empty(200, version_headers(bucket, entry))


async def get_object_retention(call: Call) -> Response:
    bucket, entry = await _locked_version(call)
    return xml(200, object_lock.retention_document(entry), version_headers(bucket, entry))


async def put_object_legal_hold(call: Call) -> Response:
    bucket, _ = await _locked_version(call)
    hold = object_lock.parse_legal_hold(await _body(call))
    entry = await _change(call, bucket, {"legal_hold": hold}, None)
    return empty(200, version_headers(bucket, entry))


async def get_object_legal_hold(call: Call) -> Response:
    bucket, entry = await _locked_version(call)
    return xml(200, object_lock.legal_hold_document(entry), version_headers(bucket, entry))
