"""Finding data objects nothing refers to: what a gateway killed mid-upload leaves behind.

A gateway that dies after writing stripes but before publishing them (or after replacing
an object but before queueing the old data) leaves data objects no index entry, upload or
GC entry names. ``store s3 gc --orphans`` finds them: it lists the pool's data objects
*first*, then collects every reference, and deletes only listed objects that are not
referenced and are older than ``min_age`` (their name carries their creation time), so
an upload in progress — not published yet — is never taken for an orphan unless it has
been running longer than that.
"""

from __future__ import annotations

import time

from store.gateways.s3 import layout, versions
from store.gateways.s3.backend import Backend, Gone
from store.gateways.s3.buckets import Buckets
from store.gateways.s3.layout import Entry, Garbage, PartEntry


def data_head_of(name: str) -> tuple[str, str] | None:
    """(head, token) of a data or part object name (a stripe maps to its head)."""
    parts = name.split(".")
    if len(parts) not in (4, 5) or parts[0] != "s3" or parts[1] not in ("data", "part"):
        return None
    if len(parts) == 5 and not parts[4].isdigit():
        return None
    return ".".join(parts[:4]), parts[3]


async def _pages(backend: Backend, name: str, prefix: str = "") -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    after: str | None = None
    while True:
        try:
            page, more = await backend.omap_page(name, after, 1000, prefix)
        except Gone:
            return found
        found.extend(page)
        if not more or not page:
            return found
        after = page[-1][0]


async def referenced_heads(backend: Backend) -> set[str]:
    heads: set[str] = set()

    async def add_entry_heads(head: str | None, parts: int, manifest_size: int) -> None:
        if head is None:
            return
        heads.add(head)
        if parts:
            try:
                raw = await backend.read_data(head, 0, manifest_size)
            except Gone:
                return
            heads.update(p.head for p in layout.unpack_manifest(raw) if p.head)

    for bucket in await Buckets(backend).all():
        for shard in bucket.shard_names():
            for name, raw in await _pages(backend, shard):
                if name.startswith((versions.NULL_POINTER, versions.INLINE_DATA)):
                    continue  # a version record's name, or an inline object's bytes
                entry = Entry.from_bytes(raw)
                await add_entry_heads(entry.head, entry.parts, entry.manifest_size)
        for _, raw in await _pages(backend, layout.uploads_name(bucket.id)):
            for ref in layout.unpack_upload_refs(raw):
                for _, part_raw in await _pages(backend, layout.upload_name(ref.upload_id), "p."):
                    part = PartEntry.from_bytes(part_raw)
                    if part.head:
                        heads.add(part.head)
    for gc_shard in range(layout.GC_SHARDS):
        for _, raw in await _pages(backend, layout.gc_shard_name(gc_shard)):
            garbage = Garbage.from_bytes(raw)
            await add_entry_heads(garbage.head, garbage.parts, garbage.manifest_size)
    return heads


async def find_orphans(backend: Backend, min_age: float) -> list[tuple[str, int]]:
    """Unreferenced data objects older than ``min_age`` seconds: (name, size)."""
    listed = await backend.client.ls(backend.pool, prefix="s3.")
    heads = await referenced_heads(backend)
    cutoff = time.time() - min_age
    orphans = []
    for name, size in listed:
        parsed = data_head_of(name)
        if parsed is None:
            continue
        head, token = parsed
        if head not in heads and layout.token_time(token) <= cutoff:
            orphans.append((name, size))
    return orphans
