"""Freeing data that no index entry refers to any more, after a delay.

Overwritten and deleted objects, replaced and abandoned parts: their data objects are
queued here (omap of ``s3.gc.<n>``, keyed by the time they may go) rather than deleted at
once, because a GET that read the old index entry a moment ago may still be streaming
them. Every gateway runs a collector: it takes the due entries, deletes the data objects
they name (stripes, parts through a multipart manifest, the head last, so an interrupted
pass can be done again from the head) and then the entries. Two collectors doing the same
entry is harmless: deleting what is gone is not an error.
"""

from __future__ import annotations

import logging
import time

import trio
import xxhash

from store.gateways.s3 import layout
from store.gateways.s3.backend import Backend, Gone
from store.gateways.s3.errors import S3Error
from store.gateways.s3.layout import GC_SHARDS, Garbage

log = logging.getLogger("store.s3.gc")

DEFAULT_DELAY = 300.0
INTERVAL = 5.0
BATCH = 100


class Collector:
    def __init__(self, backend: Backend, *, delay: float = DEFAULT_DELAY) -> None:
        self.backend = backend
        self.delay = delay
        self.freed = 0  # data objects deleted by this gateway

    async def discard(self, garbage: Garbage | None) -> None:
        """Queue data for deletion after the delay."""
        if garbage is None:
            return
        due = int((time.time() + self.delay) * 1000)
        key = f"{due:013x}.{layout.new_token()}"
        shard = xxhash.xxh3_64_intdigest(garbage.head.encode()) % GC_SHARDS
        try:
            await self.backend.execute(
                layout.gc_shard_name(shard), [["omap_set", {key: garbage.to_bytes()}]]
            )
        except Exception as exc:  # the data is then an orphan for `store s3 gc`
            log.warning("could not queue %s for deletion: %s", garbage.head, exc)

    async def destroy(self, garbage: Garbage) -> None:
        """Delete the data objects of ``garbage`` now."""
        if garbage.parts:
            try:
                raw = await self.backend.read_data(garbage.head, 0, garbage.manifest_size)
                parts = layout.unpack_manifest(raw)
            except Gone:
                parts = []
            for part in parts:
                await self.destroy(Garbage(part.head, part.size))
            await self._delete(garbage.head)
            return
        count = layout.stripe_count(garbage.size, garbage.stripe)
        for index in range(count - 1, -1, -1):
            await self._delete(layout.stripe_name(garbage.head, index))

    async def _delete(self, name: str) -> None:
        if await self.backend.delete(name):
            self.freed += 1

    async def collect_once(self, now: float | None = None) -> int:
        """Process every due entry of every shard; returns how many were processed."""
        cutoff = f"{int((now if now is not None else time.time()) * 1000):013x}."
        done = 0
        for shard in range(GC_SHARDS):
            name = layout.gc_shard_name(shard)
            while True:
                try:
                    entries, _ = await self.backend.omap_page(name, None, BATCH)
                except Gone:
                    break
                due = [(key, raw) for key, raw in entries if key < cutoff]
                if not due:
                    break
                for key, raw in due:
                    try:
                        await self.destroy(Garbage.from_bytes(raw))
                    except layout.CorruptRecord as exc:
                        log.error("dropping unreadable GC entry %s: %s", key, exc)
                await self.backend.execute(name, [["omap_rm", [key for key, _ in due]]])
                done += len(due)
                if len(due) < len(entries) or len(entries) < BATCH:
                    break
        return done

    async def run(self, interval: float = INTERVAL) -> None:
        """Collect forever (a gateway's background task)."""
        while True:
            try:
                await self.collect_once()
            except (S3Error, OSError) as exc:
                log.warning("garbage collection pass failed: %s", exc)
            except Exception:
                log.exception("garbage collection pass failed")
            await trio.sleep(interval)
