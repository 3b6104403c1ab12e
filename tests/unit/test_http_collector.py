"""What the HTTP gateway's collector does with each collection entry, against a cluster
client kept in memory: it removes stripes only when no head points at them, and never
while a replacement may still be swapping the head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from store.errors import Code, RemoteError
from store.gateways.http.collector import Collector
from store.gateways.http.layout import CollectEntry, gc_object, stripe_name

POOL = "p"
LEASE = 600.0
OLD = "a" * 32
NEW = "b" * 32


@dataclass
class Head:
    upload: str | None


class MemoryClient:
    def __init__(self) -> None:
        self.objects: set[str] = set()
        self.omaps: dict[str, dict[str, bytes]] = {}

    async def omap_list(
        self, pool: str, name: str, after: str | None, limit: int
    ) -> tuple[list[tuple[str, bytes]], bool]:
        if name not in self.omaps:
            raise RemoteError(Code.ENOENT, "no such object")
        keys = sorted(k for k in self.omaps[name] if after is None or k > after)
        return [(k, self.omaps[name][k]) for k in keys[:limit]], len(keys) > limit

    async def omap_rm(self, pool: str, name: str, keys: list[str]) -> None:
        for key in keys:
            self.omaps.get(name, {}).pop(key, None)

    async def delete(self, pool: str, name: str) -> None:
        if name not in self.objects:
            raise RemoteError(Code.ENOENT, "no such object")
        self.objects.remove(name)


class MemoryObjects:
    def __init__(self) -> None:
        self.client = MemoryClient()
        self.upload_lease = LEASE
        self.heads: dict[str, Head] = {}

    async def head(self, pool: str, name: str, **_: Any) -> Head | None:
        return self.heads.get(name)

    def upload(self, upload: str, stripes: int) -> None:
        self.client.objects |= {stripe_name(upload, i) for i in range(stripes)}

    def entry(self, upload: str, entry: CollectEntry) -> None:
        self.client.omaps.setdefault(gc_object(upload), {})[upload] = entry.encode()

    def stripes_of(self, upload: str) -> set[str]:
        return {o for o in self.client.objects if o.startswith(stripe_name(upload, 0)[:-1])}

    def has_entry(self, upload: str) -> bool:
        return upload in self.client.omaps.get(gc_object(upload), {})


@pytest.fixture
def objects() -> MemoryObjects:
    store = MemoryObjects()
    store.upload(OLD, 3)
    store.upload(NEW, 2)
    return store


async def test_a_retired_upload_is_kept_while_its_replacement_may_still_land(
    objects: MemoryObjects,
) -> None:
    # The replacing gateway retired OLD and has not swapped the head yet.
    objects.heads["o"] = Head(OLD)
    objects.entry(OLD, CollectEntry("o", 1000.0, 3))
    collector = Collector(objects)  # type: ignore[arg-type]
    assert await collector.collect_pool(POOL, now=1001.0) == 0
    assert len(objects.stripes_of(OLD)) == 3 and objects.has_entry(OLD)
    # The head is swapped: the next round removes the old stripes and the entry.
    objects.heads["o"] = Head(NEW)
    assert await collector.collect_pool(POOL, now=1002.0) == 1
    assert objects.stripes_of(OLD) == set() and not objects.has_entry(OLD)
    assert len(objects.stripes_of(NEW)) == 2
    assert collector.removed_uploads == 1


async def test_an_entry_of_a_referenced_upload_is_dropped_after_a_lease(
    objects: MemoryObjects,
) -> None:
    # A replacement that failed, or a published upload whose entry was not dropped.
    objects.heads["o"] = Head(OLD)
    objects.entry(OLD, CollectEntry("o", 1000.0, 3))
    collector = Collector(objects)  # type: ignore[arg-type]
    assert await collector.collect_pool(POOL, now=1000.0 + LEASE) == 0
    assert not objects.has_entry(OLD)
    assert len(objects.stripes_of(OLD)) == 3


async def test_nothing_is_done_before_an_entry_is_due(objects: MemoryObjects) -> None:
    objects.entry(OLD, CollectEntry("o", 1000.0, 3))  # no head at all
    collector = Collector(objects)  # type: ignore[arg-type]
    assert await collector.collect_pool(POOL, now=999.0) == 0
    assert len(objects.stripes_of(OLD)) == 3 and objects.has_entry(OLD)


async def test_stripes_of_an_upload_cut_short_are_probed_past_the_count(
    objects: MemoryObjects,
) -> None:
    objects.upload(OLD, 9)  # more stripes than the entry knows of
    objects.entry(OLD, CollectEntry("o", 1000.0, None))
    collector = Collector(objects)  # type: ignore[arg-type]
    assert await collector.collect_pool(POOL, now=1000.0) == 1
    assert objects.stripes_of(OLD) == set() and not objects.has_entry(OLD)


async def test_an_unreadable_entry_is_dropped(objects: MemoryObjects) -> None:
    objects.client.omaps[gc_object(OLD)] = {OLD: b"\xc1 not msgpack", "nonsense": b""}
    collector = Collector(objects)  # type: ignore[arg-type]
    assert await collector.collect_pool(POOL, now=1000.0) == 0
    assert objects.client.omaps[gc_object(OLD)] == {}
    assert len(objects.stripes_of(OLD)) == 3
