"""The gateway's shared state and one request's context (:class:`Call`).

A :class:`Gateway` holds what every request needs: the cluster backend, users, buckets,
the index, the collector, the memory budget, the nursery where background reads run, and
the request counters the metrics port reads.
It holds no S3 state of its own beyond short-lived caches, so any number of gateways can
serve the same pool.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from store.gateways.s3 import acl, errors, policy, policy_requests
from store.gateways.s3.backend import Backend
from store.gateways.s3.buckets import Buckets
from store.gateways.s3.chunked import ChunkSigning
from store.gateways.s3.gc import Collector
from store.gateways.s3.index import Index
from store.gateways.s3.layout import DEFAULT_INDEX_SHARDS, Bucket, Entry, User
from store.gateways.s3.objects import Budget
from store.gateways.s3.payload import Payload
from store.gateways.s3.routing import Route
from store.gateways.s3.users import Users
from store.gateways.web.server import Request
from store.metrics.s3 import S3Stats

log = logging.getLogger("store.s3")


@dataclass
class Settings:
    region: str = "us-east-1"
    domains: tuple[str, ...] = ()
    index_shards: int = DEFAULT_INDEX_SHARDS
    gc_delay: float = 300.0
    host_id: str = field(default_factory=lambda: secrets.token_urlsafe(24))


class Gateway:
    def __init__(
        self,
        backend: Backend,
        settings: Settings,
        nursery: trio.Nursery,
        stats: S3Stats | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.nursery = nursery
        self.users = Users(backend)
        self.buckets = Buckets(backend)
        self.collector = Collector(backend, delay=settings.gc_delay)
        self.index = Index(backend, self.buckets, self.collector)
        self.budget = Budget()
        self.stats = stats if stats is not None else S3Stats()


@dataclass
class Call:
    """One authenticated request on its way through an operation."""

    gateway: Gateway
    request: Request
    route: Route
    user: User
    request_id: str
    payload_hash: str | None  # what a SigV4 request declared; None for SigV2
    signing: ChunkSigning | None  # for aws-chunked bodies
    _policy_keys: dict[str, list[str]] | None = field(default=None, init=False, repr=False)

    @property
    def signature(self) -> str:
        """The signature version, as the ``s3:signatureversion`` condition key names it."""
        return "AWS" if self.payload_hash is None else "AWS4-HMAC-SHA256"

    def header(self, name: str) -> str | None:
        return self.request.header(name)

    @property
    def headers(self) -> Sequence[tuple[str, str]]:
        return self.request.headers

    @property
    def params(self) -> dict[str, str]:
        return self.route.params

    @property
    def bucket_name(self) -> str:
        assert self.route.bucket is not None
        return self.route.bucket

    @property
    def key(self) -> str:
        assert self.route.key is not None
        return self.route.key

    def payload(
        self, *, object_checksums: bool = True, default_algorithm: str | None = None
    ) -> Payload:
        length = None
        raw = self.header("content-length")
        if raw is not None:
            if not raw.strip().isdigit():
                raise errors.invalid_argument("Invalid Content-Length", "Content-Length", raw)
            length = int(raw)
        chunked = (self.header("transfer-encoding") or "").lower().strip() != ""
        return Payload(
            self.request.body,
            self.headers,
            payload_hash=self.payload_hash,
            signing=self.signing,
            wire_length=length,
            chunked_transfer=chunked,
            object_checksums=object_checksums,
            default_algorithm=default_algorithm,
        )

    async def small_body(self, limit: int = 64 * 1024) -> bytes:
        """The whole body of a request that carries a document (at most ``limit`` bytes),
        its checksums verified."""
        payload = self.payload()
        body = await payload.read_all(limit)
        payload.finish()
        return body

    @property
    def anonymous(self) -> bool:
        return self.user.id == acl.ANONYMOUS_ID

    # --- access: the bucket policy first, then the ACLs ----------------------------------

    @property
    def action(self) -> str:
        """The request's action, as bucket policies name it."""
        return policy_requests.action_of(self.route.operation, self.params)

    def policy_decision(
        self,
        bucket: Bucket,
        action: str,
        key: str | None,
        entry: Entry | None = None,
        extra: dict[str, list[str]] | None = None,
    ) -> str | None:
        """What the bucket's policy says of the caller doing ``action`` on the bucket
        (``key`` None) or an object: ALLOW, DENY or None (nothing)."""
        if bucket.policy is None:
            return None
        try:
            document = policy.parsed(bucket.policy)
        except policy.PolicyError:
            log.error("bucket %s has a policy that does not parse", bucket.name)
            return None
        if self._policy_keys is None:
            user = None if self.anonymous else (self.user.name, self.user.id)
            self._policy_keys = policy_requests.request_keys(
                self.headers,
                self.params,
                peer=self.request.peer[0],
                secure=self.request.scheme == "https",
                user=user,
                signature=None if self.anonymous else self.signature,
            )
        keys = self._policy_keys
        if entry is not None and entry.tags:
            keys = {**keys, **policy_requests.object_tag_keys(entry.tags)}
        if extra:
            keys = {**keys, **extra}
        caller = policy.Caller(self.user.id, self.user.name, self.anonymous)
        decision = document.decide(
            caller, action, policy_requests.resource_of(bucket.name, key), keys
        )
        if (
            decision == policy.ALLOW
            and bucket.restricts_public_policy
            and document.public
            and self.user.id != bucket.owner_id
        ):
            return None  # RestrictPublicBuckets: a public policy grants only the owner
        return decision

    async def owned_bucket(self, name: str | None = None) -> Bucket:
        """The bucket named by the request (or ``name``), whose configuration the request
        changes or reads: the owner's unless its policy denies it, others' only where the
        policy allows it; the policy itself is always the owner's alone."""
        bucket = await self.gateway.buckets.require(name or self.bucket_name)
        action = self.action
        if action in policy_requests.OWNER_KEEPS:
            allowed = bucket.owner_id == self.user.id
        else:
            decision = self.policy_decision(bucket, action, None)
            allowed = _allowed(bucket.owner_id == self.user.id, decision)
        if not allowed:
            raise errors.access_denied()
        self.check_expected_owner(bucket)
        return bucket

    async def bucket_allowing(self, permission: str, name: str | None = None) -> Bucket:
        """The bucket named by the request (or ``name``), where the caller may do the
        request's action: its ACL grants ``permission``, or its policy allows it."""
        bucket = await self.gateway.buckets.require(name or self.bucket_name)
        self.check_expected_owner(bucket)
        self.check_bucket(bucket, permission, key=self.route.key if name is None else None)
        return bucket

    def check_bucket(
        self, bucket: Bucket, permission: str, *, key: str | None, action: str | None = None
    ) -> None:
        """Refuse (AccessDenied) ``action`` (the request's) on the bucket or one of its
        keys unless the bucket's ACL grants ``permission`` or its policy allows it."""
        if not self._bucket_allows(bucket, permission, action or self.action, key):
            raise errors.access_denied()

    def _bucket_allows(
        self,
        bucket: Bucket,
        permission: str,
        action: str,
        key: str | None,
        extra: dict[str, list[str]] | None = None,
    ) -> bool:
        grants = acl.allows(
            bucket.acl,
            bucket.owner_id,
            self.user.id,
            permission,
            ignore_public=bucket.ignores_public_acls,
            grants=bucket.grants,
        )
        return _allowed(grants, self.policy_decision(bucket, action, key, extra=extra))

    async def existing_bucket(self, name: str | None = None) -> Bucket:
        """The bucket named by the request (or ``name``), whatever its ACL says: access
        is decided by the object's (see :meth:`check_object`)."""
        bucket = await self.gateway.buckets.require(name or self.bucket_name)
        self.check_expected_owner(bucket)
        return bucket

    def check_object(
        self,
        bucket: Bucket,
        entry: Entry,
        permission: str,
        *,
        action: str | None = None,
        key: str | None = None,
    ) -> None:
        """Refuse (AccessDenied) unless the object's ACL grants the caller ``permission``
        or the bucket's policy allows ``action`` (the request's) on it (``key``: the
        request's)."""
        grants = acl.allows(
            entry.acl,
            entry.owner_id,
            self.user.id,
            permission,
            bucket.owner_id,
            ignore_public=bucket.ignores_public_acls,
            grants=entry.grants,
        )
        decision = self.policy_decision(
            bucket, action or self.action, key if key is not None else self.route.key, entry
        )
        if not _allowed(grants, decision):
            raise errors.access_denied()

    def may_list(self, bucket: Bucket, key: str | None = None) -> bool:
        """Whether the caller may learn which keys exist (else a missing ``key`` is 403):
        a policy is asked about listing with the key as the prefix."""
        extra = {"s3:prefix": [key]} if key is not None else None
        return self._bucket_allows(bucket, acl.READ, "s3:ListBucket", None, extra)

    def check_expected_owner(self, bucket: Bucket) -> None:
        expected = self.header("x-amz-expected-bucket-owner")
        if expected is not None and expected.strip() != bucket.owner_id:
            raise errors.access_denied()


def _allowed(acl_grants: bool, decision: str | None) -> bool:
    """The policy first (an explicit deny wins, an allow grants), then the ACL."""
    return decision != policy.DENY and (decision == policy.ALLOW or acl_grants)
