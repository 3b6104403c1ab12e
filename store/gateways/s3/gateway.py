"""The gateway's shared state and one request's context (:class:`Call`).

A :class:`Gateway` holds what every request needs: the cluster backend, users, buckets,
the index, the collector, the memory budget, the nursery where background reads run, and
the request counters the metrics port reads.
It holds no S3 state of its own beyond short-lived caches, so any number of gateways can
serve the same pool.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from store.gateways.s3 import acl, errors
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

    async def owned_bucket(self, name: str | None = None) -> Bucket:
        """The bucket named by the request (or ``name``), which the caller must own."""
        bucket = await self.gateway.buckets.require(name or self.bucket_name)
        self.check_owner(bucket)
        return bucket

    async def bucket_allowing(self, permission: str, name: str | None = None) -> Bucket:
        """The bucket named by the request (or ``name``), whose ACL must grant the caller
        ``permission``."""
        bucket = await self.gateway.buckets.require(name or self.bucket_name)
        self.check_expected_owner(bucket)
        if not acl.allows(
            bucket.acl,
            bucket.owner_id,
            self.user.id,
            permission,
            ignore_public=bucket.ignores_public_acls,
            grants=bucket.grants,
        ):
            raise errors.access_denied()
        return bucket

    async def existing_bucket(self, name: str | None = None) -> Bucket:
        """The bucket named by the request (or ``name``), whatever its ACL says: access
        is decided by the object's (see :meth:`check_object`)."""
        bucket = await self.gateway.buckets.require(name or self.bucket_name)
        self.check_expected_owner(bucket)
        return bucket

    def check_object(self, bucket: Bucket, entry: Entry, permission: str) -> None:
        """Refuse (AccessDenied) unless the object's ACL grants the caller ``permission``."""
        if not acl.allows(
            entry.acl,
            entry.owner_id,
            self.user.id,
            permission,
            bucket.owner_id,
            ignore_public=bucket.ignores_public_acls,
            grants=entry.grants,
        ):
            raise errors.access_denied()

    def may_list(self, bucket: Bucket) -> bool:
        """Whether the caller may learn which keys exist (else a missing one is 403)."""
        return acl.allows(
            bucket.acl,
            bucket.owner_id,
            self.user.id,
            acl.READ,
            ignore_public=bucket.ignores_public_acls,
            grants=bucket.grants,
        )

    def check_owner(self, bucket: Bucket) -> None:
        if bucket.owner_id != self.user.id:
            raise errors.access_denied()
        self.check_expected_owner(bucket)

    def check_expected_owner(self, bucket: Bucket) -> None:
        expected = self.header("x-amz-expected-bucket-owner")
        if expected is not None and expected.strip() != bucket.owner_id:
            raise errors.access_denied()
