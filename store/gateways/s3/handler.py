"""The S3 request handler: route, authenticate, dispatch, and turn failures into S3 errors.

``make_handler(gateway)`` returns the ``async def handle(request) -> Response`` the HTTP
server calls. Every response carries ``x-amz-request-id`` (the ``RequestId`` of an error
document) and ``x-amz-id-2``. Anonymous requests are refused; a request signed with a key
the cluster does not know is ``InvalidAccessKeyId``; only a bucket's owner may use it. Two
requests carry no signature header: a form upload (POST Object) is signed in the form,
and a CORS preflight is answered from the bucket's CORS rules. A request with an
``Origin`` gets the matching rule's ``Access-Control-*`` headers on its answer.

Every request but ``/healthz`` is counted in the gateway's ``S3Stats`` (plain
counters, see ``store.metrics.s3``): by operation and status, its body bytes and latency,
and, when authentication refuses it, by the reason.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

from store.errors import ClientTimeout, RemoteError, single_error
from store.gateways.s3 import (
    acl,
    completion,
    cors,
    errors,
    multipart,
    ops_buckets,
    ops_copy,
    ops_lock,
    ops_object_meta,
    ops_objects,
    ops_policy,
    ops_post,
    responses,
    routing,
    sigv2,
    sigv4,
)
from store.gateways.s3.backend import cluster_error
from store.gateways.s3.chunked import ChunkSigning
from store.gateways.s3.errors import S3Error
from store.gateways.s3.gateway import Call, Gateway
from store.gateways.s3.layout import CorruptRecord, User
from store.gateways.s3.routing import Route
from store.gateways.web.server import ClientDisconnected, Request, Response

log = logging.getLogger("store.s3")

Operation = Callable[[Call], Awaitable[Response]]

OPERATIONS: dict[str, Operation] = {
    "ListBuckets": ops_buckets.list_buckets,
    "CreateBucket": ops_buckets.create_bucket,
    "HeadBucket": ops_buckets.head_bucket,
    "DeleteBucket": ops_buckets.delete_bucket,
    "GetBucketLocation": ops_buckets.get_bucket_location,
    "GetBucketVersioning": ops_buckets.get_bucket_versioning,
    "PutBucketVersioning": ops_buckets.put_bucket_versioning,
    "GetBucketAcl": ops_buckets.get_bucket_acl,
    "PutBucketAcl": ops_buckets.put_bucket_acl,
    "GetBucketTagging": ops_buckets.get_bucket_tagging,
    "PutBucketTagging": ops_buckets.put_bucket_tagging,
    "DeleteBucketTagging": ops_buckets.delete_bucket_tagging,
    "GetPublicAccessBlock": ops_buckets.get_public_access_block,
    "PutPublicAccessBlock": ops_buckets.put_public_access_block,
    "DeletePublicAccessBlock": ops_buckets.delete_public_access_block,
    "GetBucketCors": ops_buckets.get_bucket_cors,
    "PutBucketCors": ops_buckets.put_bucket_cors,
    "DeleteBucketCors": ops_buckets.delete_bucket_cors,
    "ListObjects": ops_buckets.list_objects,
    "ListObjectsV2": ops_buckets.list_objects_v2,
    "ListObjectVersions": ops_buckets.list_object_versions,
    "PutObject": ops_objects.put_object,
    "CopyObject": ops_copy.copy_object,
    "GetObject": ops_objects.get_object,
    "HeadObject": ops_objects.head_object,
    "DeleteObject": ops_objects.delete_object,
    "DeleteObjects": ops_objects.delete_objects,
    "GetObjectAcl": ops_object_meta.get_object_acl,
    "GetObjectAttributes": ops_object_meta.get_object_attributes,
    "PutObjectAcl": ops_object_meta.put_object_acl,
    "GetObjectTagging": ops_object_meta.get_object_tagging,
    "PutObjectTagging": ops_object_meta.put_object_tagging,
    "DeleteObjectTagging": ops_object_meta.delete_object_tagging,
    "GetObjectLockConfiguration": ops_lock.get_object_lock_configuration,
    "PutObjectLockConfiguration": ops_lock.put_object_lock_configuration,
    "GetObjectRetention": ops_lock.get_object_retention,
    "PutObjectRetention": ops_lock.put_object_retention,
    "GetObjectLegalHold": ops_lock.get_object_legal_hold,
    "PutObjectLegalHold": ops_lock.put_object_legal_hold,
    "CreateMultipartUpload": multipart.create_multipart_upload,
    "UploadPart": multipart.upload_part,
    "UploadPartCopy": multipart.upload_part_copy,
    "CompleteMultipartUpload": completion.complete_multipart_upload,
    "AbortMultipartUpload": multipart.abort_multipart_upload,
    "ListParts": multipart.list_parts,
    "ListMultipartUploads": multipart.list_multipart_uploads,
    "PutBucketPolicy": ops_policy.put_bucket_policy,
    "GetBucketPolicy": ops_policy.get_bucket_policy,
    "DeleteBucketPolicy": ops_policy.delete_bucket_policy,
    "GetBucketPolicyStatus": ops_policy.get_bucket_policy_status,
}
for _operation in routing.UNCONFIGURED_BUCKET_GETS.values():
    OPERATIONS[_operation] = ops_buckets.get_unconfigured
for _operation in routing.UNCONFIGURED_BUCKET_DELETES.values():
    OPERATIONS[_operation] = ops_buckets.delete_unconfigured


# Operations that are not signed in the usual way: a form upload carries its signature
# in the form; a CORS preflight carries none and is answered from the bucket's rules.
UNSIGNED = ("PostObject", "PreflightRequest")
# Operations the router names that have no implementation here (answered as errors).
UNSERVED = ("MethodNotAllowed", "NotImplemented")
INVALID = "Invalid"  # the label of a request the router refused
ANONYMOUS = "Anonymous"  # the reason of a refused request that carried no credentials
_PRESIGNED_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "AWSAccessKeyId", "Signature")


def operation_label(operation: str) -> str:
    """The `operation` label of a routed request: from a fixed set, whatever was sent."""
    if operation in OPERATIONS or operation in UNSERVED or operation in UNSIGNED:
        return operation
    return "NotImplemented"


def carries_credentials(request: Request) -> bool:
    """Whether a request is signed (in a header or a presigned URL), well or not."""
    if request.header("authorization") is not None:
        return True
    for raw, _ in sigv4.split_query(request.query):
        try:
            name = sigv4.decode_component(raw)
        except S3Error:  # undecodable: not one of ours, but it was sent as a parameter
            name = raw
        if name in _PRESIGNED_PARAMS:
            return True
    return False


def auth_failure_reason(exc: S3Error, request: Request) -> str:
    """The `reason` label of a request authentication refused."""
    return exc.code if carries_credentials(request) else ANONYMOUS


def new_request_id() -> str:
    return secrets.token_hex(8).upper()


async def authenticate(
    gateway: Gateway, request: Request, route: Route, now: datetime
) -> tuple[User, str | None, ChunkSigning | None]:
    """The user a request is signed by, its declared payload hash and chunk signing."""
    headers = request.headers
    region = gateway.settings.region
    v4 = sigv4.parse_request(request.method, request.query, headers, region=region, now=now)
    if v4 is not None:
        found = await gateway.users.lookup_key(v4.access_key)
        if found is None:
            raise errors.invalid_access_key_id(v4.access_key)
        key, user = found
        verified = sigv4.verify(
            v4, key.secret, request.method, request.path, request.query, headers
        )
        signing = ChunkSigning(
            verified.key, verified.amz_date, verified.scope, verified.seed_signature
        )
        return user, v4.payload_hash, signing
    v2 = sigv2.parse_request(request.query, headers, now=now)
    if v2 is not None:
        found = await gateway.users.lookup_key(v2.access_key)
        if found is None:
            raise errors.invalid_access_key_id(v2.access_key)
        key, user = found
        resource = request.path
        if route.virtual_host and route.bucket is not None:
            resource = f"/{route.bucket}{request.path}"
        sigv2.verify(v2, key.secret, request.method, resource, request.query, headers)
        return user, None, None
    if request.header("authorization") is not None:
        raise sigv4.unsupported_mechanism()
    # Anonymous: what the ACLs grant everyone, and nothing else.
    return acl.ANONYMOUS_USER, None, None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for inner in group.exceptions:
        if isinstance(inner, BaseExceptionGroup):
            yield from _leaves(inner)
        else:
            yield inner


def failure_of(exc: BaseException, request: Request) -> S3Error:
    """The S3 error to answer for what an operation raised (re-raises a disconnect)."""
    # Errors raised inside nurseries arrive wrapped in groups: answer for the first.
    exc = single_error(exc)
    if isinstance(exc, BaseExceptionGroup):
        leaves = list(_leaves(exc))
        for kind in (ClientDisconnected, S3Error, RemoteError, ClientTimeout):
            for leaf in leaves:
                if isinstance(leaf, kind):
                    return failure_of(leaf, request)
        raise exc
    if isinstance(exc, S3Error):
        if exc.status >= 500 and exc.code != "NotImplemented":
            log.warning("%s %s: %s", request.method, request.target, exc)
        return exc
    if isinstance(exc, ClientDisconnected):
        raise exc
    if isinstance(exc, RemoteError | ClientTimeout):
        return cluster_error(exc)
    if isinstance(exc, CorruptRecord):
        log.error("%s %s: %s", request.method, request.target, exc)
        return errors.internal_error()
    if not isinstance(exc, Exception):
        raise exc
    log.error("%s %s failed", request.method, request.target, exc_info=exc)
    return errors.internal_error()


async def preflight(gateway: Gateway, request: Request, route: Route) -> Response:
    """Answer a CORS preflight from the bucket's rules (no credentials are involved)."""
    assert route.bucket is not None
    bucket = await gateway.buckets.get(route.bucket)
    if bucket is None:
        raise errors.no_such_bucket(route.bucket)
    headers = cors.preflight(
        bucket.cors,
        request.header("origin"),
        request.header("access-control-request-method"),
        request.header("access-control-request-headers"),
    )
    return Response(200, headers, b"")


def make_handler(
    gateway: Gateway, clock: Callable[[], float] = time.monotonic
) -> Callable[[Request], Awaitable[Response]]:
    settings = gateway.settings
    stats = gateway.stats

    async def respond(request: Request, request_id: str) -> tuple[str, Response]:
        """The operation's label and the (unstamped) response to `request`, with the CORS
        headers of the bucket's rule for the request's origin, if it has one."""
        label, bucket, response = await answer(request, request_id)
        origin = request.header("origin")
        if origin and bucket is not None and label != "PreflightRequest":
            response.headers.extend(await cors_headers(bucket, origin, request.method))
        return label, response

    async def cors_headers(name: str, origin: str, method: str) -> list[tuple[str, str]]:
        try:
            found = await gateway.buckets.get(name)
        except Exception as exc:  # the answer stands without them
            log.debug("no CORS headers for %s: %s", name, exc)
            return []
        rule = cors.matching(found.cors, origin, method) if found is not None else None
        return cors.allow_headers(rule, origin) if rule is not None else []

    async def answer(request: Request, request_id: str) -> tuple[str, str | None, Response]:
        """The operation's label, the bucket it names and the response."""
        resource = request.path
        label = INVALID
        bucket: str | None = None
        try:
            route = routing.route(
                request.method,
                request.path,
                request.query,
                request.header("host"),
                settings.domains,
            )
            resource = route.resource
            label = operation_label(route.operation)
            bucket = route.bucket
            if route.operation == "PostObject":  # signed by the form, not by a header
                response = await ops_post.post_object(gateway, request, route, request_id)
                return label, bucket, response
            if route.operation == "PreflightRequest":
                return label, bucket, await preflight(gateway, request, route)
            try:
                user, payload_hash, signing = await authenticate(
                    gateway, request, route, datetime.now(UTC)
                )
            except S3Error as exc:
                if exc.status < 500:  # not a refusal: the cluster failed to answer
                    stats.auth_failed(auth_failure_reason(exc, request))
                raise
            if request.header("x-amz-copy-source") is not None:
                # PUT with a copy source is a copy, of an object or into a part.
                copies = {"PutObject": "CopyObject", "UploadPart": "UploadPartCopy"}
                route.operation = copies.get(route.operation, route.operation)
                label = operation_label(route.operation)
            operation = OPERATIONS.get(route.operation)
            if operation is None:
                if route.operation == "MethodNotAllowed":
                    kind = "OBJECT" if route.key else "BUCKET" if route.bucket else "SERVICE"
                    raise errors.method_not_allowed(request.method, kind)
                raise errors.not_implemented()
            call = Call(gateway, request, route, user, request_id, payload_hash, signing)
            try:
                response = await operation(call)
            except S3Error as exc:
                if call.anonymous and exc.code == "AccessDenied":
                    stats.auth_failed(ANONYMOUS)  # what needed credentials was sent none
                raise
        except Exception as exc:
            failure = failure_of(exc, request)
            response = responses.error(failure, resource, request_id, settings.host_id)
        return label, bucket, response

    async def handle(request: Request) -> Response:
        request_id = new_request_id()
        if request.path == "/healthz" and request.method in ("GET", "HEAD"):
            return responses.stamp(
                Response(200, [("Content-Type", "text/plain")], b"ok\n"),
                request_id,
                settings.host_id,
            )
        started = clock()
        stats.started()
        try:
            label, response = await respond(request, request_id)
        except BaseException:
            stats.abandoned()
            raise
        log.debug("%s %s -> %d", request.method, request.target, response.status)
        response = responses.stamp(response, request_id, settings.host_id)
        return stats.answered(label, request, response, started, clock)

    return handle
