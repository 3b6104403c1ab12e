"""Removes stripes nothing points at any more (see ``layout.py``, ``storage.py``).

Every gateway runs one, over every pool of the map, every ``interval`` seconds; several
gateways collecting the same pool is harmless (deleting twice is fine). An entry is acted
on once its time has passed: if its head no longer points at its upload, the stripes
are deleted and then the entry. If the head still points at it, the upload was published,
or a replacement is on its way (the replacing gateway retires the old stripes before it
swaps the head), or a replacement failed: the entry is left alone for one upload lease
more, by which time a replacement has landed or given up, and only then dropped. Stripes of an upload cut short by a crash are not
counted anywhere; they are probed from 0 until a run of absent ones (an upload has at
most a few segments in flight, all within two stripes of its end).
"""

from __future__ import annotations

import logging
import time

import trio

from store.errors import Code, RemoteError, StoreError
from store.gateways.http.layout import (
    CollectEntry,
    CorruptLayout,
    gc_objects,
    is_upload_id,
    stripe_name,
)
from store.gateways.http.storage import HttpObjects, ungrouped

log = logging.getLogger("store.http.collector")

PAGE = 500
PROBE_RUN = 4
PARALLEL_DELETES = 16


class Collector:
    def __init__(self, objects: HttpObjects) -> None:
        self.objects = objects
        self.client = objects.client
        self.removed_uploads = 0

    async def run(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            for spec in list(self.client.map.pools.values()):
                try:
                    await self.collect_pool(spec.name)
                except (StoreError, CorruptLayout) as exc:
                    if isinstance(exc, RemoteError) and exc.code == Code.EPERM:
                        continue  # this gateway's key does not reach that pool
                    log.warning("collecting pool %r: %s", spec.name, exc)
                except Exception:  # never let the collector take the gateway down
                    log.exception("collecting pool %r failed", spec.name)

    async def collect_pool(self, pool: str, now: float | None = None) -> int:
        """Act on the due entries of `pool`; returns how many uploads were removed."""
        now = time.time() if now is None else now
        removed = 0
        for shard in gc_objects():
            after: str | None = None
            while True:
                try:
                    entries, more = await self.client.omap_list(pool, shard, after, PAGE)
                except RemoteError as exc:
                    if exc.code == Code.ENOENT:
                        break
                    raise
                for upload, raw in entries:
                    done = await self._consider(pool, shard, upload, raw, now)
                    removed += done
                    self.removed_uploads += done  # counted at once: the metrics read it
                if not more or not entries:
                    break
                after = entries[-1][0]
        return removed

    async def _consider(self, pool: str, shard: str, upload: str, raw: bytes, now: float) -> int:
        try:
            if not is_upload_id(upload):
                raise CorruptLayout(f"key {upload!r} is not an upload id")
            entry = CollectEntry.decode_untrusted(raw)
        except CorruptLayout as exc:
            log.warning("pool %r: dropping unreadable collection entry %r: %s", pool, upload, exc)
            await self.client.omap_rm(pool, shard, [upload])
            return 0
        if entry.not_before > now:
            return 0
        head = await self.objects.head(pool, entry.name)
        if head is not None and head.upload == upload:
            if entry.not_before + self.objects.upload_lease <= now:
                await self.client.omap_rm(pool, shard, [upload])
            return 0
        await self._delete_stripes(pool, upload, entry.stripes)
        await self.client.omap_rm(pool, shard, [upload])
        log.info("pool %r: removed the stripes of upload %s (%r)", pool, upload, entry.name)
        return 1

    async def _delete_stripes(self, pool: str, upload: str, count: int | None) -> None:
        if count is not None:
            await self._delete_batch(pool, upload, range(count))
            # Writes cut short may have reached past the count we know of.
            start = count
        else:
            start = 0
        while True:
            found = await self._delete_batch(pool, upload, range(start, start + PROBE_RUN))
            if not found:
                return
            start += PROBE_RUN

    async def _delete_batch(self, pool: str, upload: str, indexes: range) -> int:
        limiter = trio.CapacityLimiter(PARALLEL_DELETES)
        found = 0

        async def one(index: int) -> None:
            nonlocal found
            async with limiter:
                try:
                    await self.client.delete(pool, stripe_name(upload, index))
                    found += 1
                except RemoteError as exc:
                    if exc.code != Code.ENOENT:
                        raise

        with ungrouped():
            async with trio.open_nursery() as nursery:
                for index in indexes:
                    nursery.start_soon(one, index)
        return found
