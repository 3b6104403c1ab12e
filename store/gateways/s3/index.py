"""A bucket's index: one key's entry, publishing and removing entries, and listing pages.

Every change is a :meth:`Backend.swap` on the key's shard, so it is atomic and returns the
entry it replaced; the data of that entry is handed to the collector. A shard that is gone
means the bucket was deleted (or deleted and created again, when the record we hold is
stale): the bucket is looked up afresh and, if it still exists under the same owner, the
operation is done there; otherwise the answer is NoSuchBucket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from store.gateways.s3 import errors, layout, listing
from store.gateways.s3.backend import Backend, Gone
from store.gateways.s3.buckets import Buckets
from store.gateways.s3.gc import Collector
from store.gateways.s3.layout import Bucket, Entry, Garbage

T = TypeVar("T")


class Index:
    def __init__(self, backend: Backend, buckets: Buckets, collector: Collector) -> None:
        self.backend = backend
        self.buckets = buckets
        self.collector = collector

    async def _on_bucket(self, bucket: Bucket, action: Callable[[Bucket], Awaitable[T]]) -> T:
        try:
            return await action(bucket)
        except Gone:
            self.buckets.forget(bucket.name)
            fresh = await self.buckets.get(bucket.name, fresh=True)
            if fresh is None or fresh.id == bucket.id or fresh.owner_id != bucket.owner_id:
                raise errors.no_such_bucket(bucket.name) from None
        try:
            return await action(fresh)
        except Gone:
            raise errors.no_such_bucket(bucket.name) from None

    def _shard(self, bucket: Bucket, key: str) -> str:
        return layout.index_shard_name(bucket.id, layout.shard_of(key, bucket.shards))

    async def get(self, bucket: Bucket, key: str) -> Entry | None:
        async def action(b: Bucket) -> Entry | None:
            raw = (await self.backend.omap_get(self._shard(b, key), [key])).get(key)
            return Entry.from_bytes(raw) if raw is not None else None

        return await self._on_bucket(bucket, action)

    async def publish(self, bucket: Bucket, key: str, entry: Entry) -> Entry | None:
        """Make ``entry`` the key's object; the replaced object's data is queued for GC."""

        async def action(b: Bucket) -> bytes | None:
            return await self.backend.swap(self._shard(b, key), key, entry.to_bytes())

        old = await self._on_bucket(bucket, action)
        return await self._retire(old)

    async def publish_if(
        self, bucket: Bucket, key: str, entry: Entry, check: Callable[[Entry | None], None]
    ) -> Entry | None:
        """Publish only if ``check`` (which raises to refuse) accepts the current entry,
        atomically with respect to other writers of the shard."""

        def update(current: dict[str, bytes]) -> tuple[dict[str, bytes | None], bytes | None]:
            raw = current.get(key)
            check(Entry.from_bytes(raw) if raw is not None else None)
            return {key: entry.to_bytes()}, raw

        async def action(b: Bucket) -> bytes | None:
            return await self.backend.compare_and_set(
                self._shard(b, key), [key], update, must_exist=True
            )

        old = await self._on_bucket(bucket, action)
        return await self._retire(old)

    async def update(
        self, bucket: Bucket, key: str, change: Callable[[Entry | None], Entry]
    ) -> Entry:
        """Replace a key's entry by ``change(entry)`` (same data: nothing is freed)."""

        def update(current: dict[str, bytes]) -> tuple[dict[str, bytes | None], Entry]:
            raw = current.get(key)
            new = change(Entry.from_bytes(raw) if raw is not None else None)
            return {key: new.to_bytes()}, new

        async def action(b: Bucket) -> Entry:
            return await self.backend.compare_and_set(
                self._shard(b, key), [key], update, must_exist=True
            )

        return await self._on_bucket(bucket, action)

    async def remove(self, bucket: Bucket, key: str) -> Entry | None:
        async def action(b: Bucket) -> bytes | None:
            return await self.backend.swap(self._shard(b, key), key, None)

        old = await self._on_bucket(bucket, action)
        return await self._retire(old)

    async def remove_if(
        self, bucket: Bucket, key: str, check: Callable[[Entry | None], None]
    ) -> Entry | None:
        """Remove the key if ``check`` (which raises to refuse) accepts its entry."""

        def update(current: dict[str, bytes]) -> tuple[dict[str, bytes | None], bytes | None]:
            raw = current.get(key)
            check(Entry.from_bytes(raw) if raw is not None else None)
            return ({key: None} if raw is not None else {}), raw

        async def action(b: Bucket) -> bytes | None:
            return await self.backend.compare_and_set(
                self._shard(b, key), [key], update, must_exist=True
            )

        old = await self._on_bucket(bucket, action)
        return await self._retire(old)

    async def _retire(self, raw: bytes | None) -> Entry | None:
        if raw is None:
            return None
        try:
            old = Entry.from_bytes(raw)
        except layout.CorruptRecord:
            return None
        await self.collector.discard(Garbage.of_entry(old))
        return old

    async def page(
        self,
        bucket: Bucket,
        *,
        prefix: str,
        delimiter: str,
        marker: str | None,
        max_keys: int,
    ) -> listing.Page:
        async def action(b: Bucket) -> listing.Page:
            names = b.shard_names()

            async def fetch(
                shard: int, after: str | None, limit: int
            ) -> tuple[list[tuple[str, bytes]], bool]:
                return await self.backend.omap_page(names[shard], after, limit, prefix)

            return await listing.list_page(
                fetch,
                len(names),
                prefix=prefix,
                delimiter=delimiter,
                marker=marker,
                max_keys=max_keys,
            )

        return await self._on_bucket(bucket, action)

    async def is_empty(self, bucket: Bucket) -> bool:
        page = await self.page(bucket, prefix="", delimiter="", marker=None, max_keys=1)
        return not page.contents
