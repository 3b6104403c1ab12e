"""Bucket policies: PutBucketPolicy, GetBucketPolicy, DeleteBucketPolicy and
GetBucketPolicyStatus (how they are enforced: :mod:`policy`, ``Call.policy_decision``)."""

from __future__ import annotations

from store.gateways.s3 import acl, errors, policy, xmldoc
from store.gateways.s3.gateway import Call
from store.gateways.s3.responses import empty, xml
from store.gateways.web.server import Response


async def put_bucket_policy(call: Call) -> Response:
    bucket = await call.owned_bucket()
    body = await call.small_body(policy.MAX_POLICY_BYTES + 1)
    try:
        text = body.decode("utf-8")
        document = policy.parse(text, bucket.name)
    except UnicodeDecodeError:
        raise errors.malformed_policy("This policy contains invalid Json") from None
    except policy.PolicyError as exc:
        raise errors.malformed_policy(str(exc)) from None
    block = bucket.public_block
    if block is not None and block.block_public_policy and document.public:
        raise errors.access_denied()
    await call.gateway.buckets.set_policy(bucket, text)
    return empty(204)


async def get_bucket_policy(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if bucket.policy is None:
        raise errors.not_configured(
            "NoSuchBucketPolicy", "The bucket policy does not exist", bucket.name
        )
    return Response(200, [("Content-Type", "application/json")], bucket.policy.encode("utf-8"))


async def delete_bucket_policy(call: Call) -> Response:
    bucket = await call.owned_bucket()
    if bucket.policy is not None:
        await call.gateway.buckets.set_policy(bucket, None)
    return empty(204)


async def get_bucket_policy_status(call: Call) -> Response:
    """Whether the bucket is public: by its policy, or (as RGW also counts it) by a
    public ACL."""
    bucket = await call.owned_bucket()
    public = acl.is_public(bucket.acl, bucket.grants)
    if bucket.policy is not None:
        try:
            public = public or policy.parsed(bucket.policy).public
        except policy.PolicyError:
            pass
    return xml(200, xmldoc.Doc("PolicyStatus").leaf("IsPublic", public).to_bytes())
