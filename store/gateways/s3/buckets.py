"""Buckets: the directory (omap of ``s3.buckets``) and the life of a bucket's index.

A bucket is born with its index shards: the shards are created first, under a fresh
bucket id, and the name is claimed in the directory afterwards by compare-and-set, so a
name is taken once cluster-wide and a bucket in the directory always had its shards. A
bucket dies the other way round: each shard is deleted on condition that its version is
the one at which it was seen empty (a PUT that lands in between changes the version and
the delete is refused: BucketNotEmpty, with the shards already deleted re-created), and
only then is the name released. Writers publish into a shard on condition that it exists,
so nothing can be published into a bucket being deleted.

A bucket's policy is a record of its own beside the bucket's (``p.<name>``, naming the
bucket id it belongs to), read together with it in one request, so that listing buckets
never reads policies.

Gateways remember bucket records for ``BUCKET_TTL`` seconds. A stale record is harmless:
its shards are gone, which every index operation notices (:class:`Gone`), and the caller
then asks again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import trio

from store.errors import Code, RemoteError
from store.gateways.s3 import errors
from store.gateways.s3.access import Grant, PublicAccessBlock
from store.gateways.s3.backend import Backend, Gone, cluster_error
from store.gateways.s3.cors import CorsRule
from store.gateways.s3.layout import BUCKETS, Bucket, User, pack, unpack
from store.gateways.s3.object_lock import Rule

BUCKET_TTL = 5.0


def bucket_key(name: str) -> str:
    """The bucket's record in the directory."""
    return f"b.{name}"


def policy_key(name: str) -> str:
    return f"p.{name}"


def pack_policy(bucket_id: str, text: str) -> bytes:
    return pack({"i": bucket_id, "d": text})


def unpack_policy(raw: bytes, bucket_id: str) -> str | None:
    """The text of a policy record, if it is the bucket's (not a former namesake's)."""
    record = unpack(raw)
    text = record.get("d")
    return text if record.get("i") == bucket_id and isinstance(text, str) else None


class Buckets:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._cache: dict[str, tuple[float, Bucket | None]] = {}

    async def get(self, name: str, *, fresh: bool = False) -> Bucket | None:
        now = time.monotonic()
        cached = self._cache.get(name)
        if not fresh and cached is not None and now - cached[0] < BUCKET_TTL:
            return cached[1]
        try:
            found = await self.backend.omap_get(BUCKETS, [bucket_key(name), policy_key(name)])
        except Gone:
            found = {}
        raw = found.get(bucket_key(name))
        bucket = Bucket.from_bytes(raw) if raw is not None else None
        raw_policy = found.get(policy_key(name))
        if bucket is not None and raw_policy is not None:
            bucket = replace(bucket, policy=unpack_policy(raw_policy, bucket.id))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[name] = (now, bucket)
        return bucket

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)

    async def require(self, name: str) -> Bucket:
        bucket = await self.get(name)
        if bucket is None:
            raise errors.no_such_bucket(name)
        return bucket

    async def all(self) -> list[Bucket]:
        found: list[Bucket] = []
        after: str | None = None
        while True:
            try:
                page, more = await self.backend.omap_page(BUCKETS, after, 1000, "b.")
            except Gone:
                return []
            found.extend(Bucket.from_bytes(raw) for _, raw in page)
            if not more or not page:
                return found
            after = page[-1][0]

    async def create(
        self,
        name: str,
        owner: User,
        *,
        region: str,
        acl: str,
        shards: int,
        object_lock: bool = False,
        grants: tuple[Grant, ...] = (),
    ) -> Bucket:
        """A new bucket; one with object lock is versioned from the start."""
        bucket = Bucket(
            name=name,
            id=secrets.token_hex(8),
            owner=owner.name,
            owner_id=owner.id,
            created=time.time(),
            region=region,
            shards=shards,
            acl=acl,
            grants=grants,
            versioning="Enabled" if object_lock else "",
            object_lock=object_lock,
        )
        existing = await self.get(name, fresh=True)
        if existing is not None:
            raise self._taken(existing, owner)
        await self._create_shards(bucket)

        def claim(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], Bucket | None]:
            raw = current.get(bucket_key(name))
            if raw is not None:
                return {}, Bucket.from_bytes(raw)
            # A policy left by a namesake whose deletion was cut short goes too.
            return {bucket_key(name): bucket.to_bytes(), policy_key(name): None}, None

        taken = await self.backend.compare_and_set(BUCKETS, [bucket_key(name)], claim)
        if taken is not None:
            await self._delete_shards(bucket.shard_names())
            raise self._taken(taken, owner)
        self._cache[name] = (time.monotonic(), bucket)
        return bucket

    @staticmethod
    def _taken(existing: Bucket, owner: User) -> errors.S3Error:
        if existing.owner_id == owner.id:
            return errors.bucket_already_owned_by_you(existing.name)
        return errors.bucket_already_exists(existing.name)

    async def _create_shards(self, bucket: Bucket) -> None:
        async with trio.open_nursery() as nursery:
            for shard in bucket.shard_names():
                nursery.start_soon(self.backend.create, shard)

    async def _delete_shards(self, names: list[str]) -> None:
        async with trio.open_nursery() as nursery:
            for shard in names:
                nursery.start_soon(self.backend.delete, shard)

    async def set_acl(self, bucket: Bucket, acl: str, grants: tuple[Grant, ...] = ()) -> None:
        await self._change(bucket, acl=acl, grants=grants)

    async def set_tags(self, bucket: Bucket, tags: dict[str, str]) -> None:
        await self._change(bucket, tags=tags)

    async def set_cors(self, bucket: Bucket, rules: tuple[CorsRule, ...]) -> None:
        await self._change(bucket, cors=rules)

    async def set_versioning(self, bucket: Bucket, state: str) -> None:
        await self._change(bucket, versioning=state)

    async def set_public_block(self, bucket: Bucket, block: PublicAccessBlock | None) -> None:
        await self._change(bucket, public_block=block)

    async def set_object_lock(self, bucket: Bucket, rule: Rule | None) -> None:
        await self._change(bucket, object_lock=True, lock_rule=rule)

    async def set_policy(self, bucket: Bucket, text: str | None) -> None:
        """Set (or with None, delete) the bucket's policy."""
        record = pack_policy(bucket.id, text) if text is not None else None
        await self._rewrite(bucket, lambda _: {policy_key(bucket.name): record})

    async def _change(self, bucket: Bucket, **changes: Any) -> None:
        await self._rewrite(
            bucket,
            lambda current: {bucket_key(bucket.name): replace(current, **changes).to_bytes()},
        )

    async def _rewrite(
        self, bucket: Bucket, writes: Callable[[Bucket], Mapping[str, bytes | None]]
    ) -> None:
        """Write ``writes(record)`` for the bucket's current record, on condition that the
        directory is unchanged; NoSuchBucket if the bucket is gone (or is a namesake)."""

        def update(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], None]:
            raw = current.get(bucket_key(bucket.name))
            found = Bucket.from_bytes(raw) if raw is not None else None
            if found is None or found.id != bucket.id:
                raise errors.no_such_bucket(bucket.name)
            return writes(found), None

        await self.backend.compare_and_set(BUCKETS, [bucket_key(bucket.name)], update)
        self.forget(bucket.name)

    async def delete(self, bucket: Bucket) -> None:
        """Delete an empty bucket; raises BucketNotEmpty (changing nothing) otherwise."""
        deleted: list[str] = []
        try:
            for shard in bucket.shard_names():
                try:
                    reply = await self.backend.execute(shard, [["omap_list", None, 1, ""]])
                except RemoteError as exc:
                    if exc.code == Code.ENOENT:
                        continue  # an earlier, interrupted deletion got this far
                    raise cluster_error(exc) from None
                if reply["res"][0]["entries"]:
                    raise errors.bucket_not_empty(bucket.name)
                try:
                    await self.backend.delete(shard, {"version": list(reply["v"])})
                except RemoteError:  # ECANCELED: written to since it was seen empty
                    raise errors.bucket_not_empty(bucket.name) from None
                deleted.append(shard)
        except errors.S3Error:
            for shard in deleted:
                await self.backend.create(shard)
            raise

        def release(current: dict[str, bytes]) -> tuple[Mapping[str, bytes | None], None]:
            raw = current.get(bucket_key(bucket.name))
            if raw is not None and Bucket.from_bytes(raw).id == bucket.id:
                return {bucket_key(bucket.name): None, policy_key(bucket.name): None}, None
            return {}, None

        await self.backend.compare_and_set(BUCKETS, [bucket_key(bucket.name)], release)
        self.forget(bucket.name)
