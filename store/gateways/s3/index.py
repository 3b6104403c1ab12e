"""A bucket's index: one key's entry, publishing and removing entries, and listing pages.

Every change is a :meth:`Backend.swap` on the key's shard, so it is atomic and returns the
entry it replaced; the data of that entry is handed to the collector. A shard that is gone
means the bucket was deleted (or deleted and created again, when the record we hold is
stale): the bucket is looked up afresh and, if it still exists under the same owner, the
operation is done there; otherwise the answer is NoSuchBucket.

In a versioned bucket a change reads the key's state (its entry, null pointer and newest
version records), computes what to write with :mod:`versions` and writes it on condition
that the shard did not change meanwhile, or reads again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from store.gateways.s3 import errors, layout, listing, versions
from store.gateways.s3.backend import (
    MAX_CAS_ATTEMPTS,
    Backend,
    Gone,
    contention_pause,
    gave_up,
)
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

    # --- reading one key -----------------------------------------------------------------

    async def get(self, bucket: Bucket, key: str) -> Entry | None:
        """The key's current object (None when there is none, or a delete marker)."""
        entry = await self.lookup(bucket, key)
        return None if entry is None or entry.delete_marker else entry

    async def lookup(self, bucket: Bucket, key: str, version: str | None = None) -> Entry | None:
        """A version of the key by id (None: the current one), delete markers included."""
        if version is None:

            async def current(b: Bucket) -> Entry | None:
                names = [key, versions.inline_name(key)]
                values = await self.backend.omap_get(self._shard(b, key), names)
                return _with_data(values, key)

            return await self._on_bucket(bucket, current)

        async def action(b: Bucket) -> Entry | None:
            snap, _ = await self._snapshot(self._shard(b, key), key, [version])
            return snap.lookup(version)

        return await self._on_bucket(bucket, action)

    async def null_sk(self, bucket: Bucket, key: str) -> str | None:
        """The record name suffix of the key's recorded null version, if it has one."""

        async def action(b: Bucket) -> str | None:
            pointer = versions.null_pointer(key)
            raw = (await self.backend.omap_get(self._shard(b, key), [pointer])).get(pointer)
            return raw.decode() if raw is not None else None

        return await self._on_bucket(bucket, action)

    async def _snapshot(
        self, name: str, key: str, wanted: Sequence[str | None] = ()
    ) -> tuple[versions.Snapshot, list[Any]]:
        sks = [v for v in wanted if v is not None and versions.is_sk(v)]
        names = [key, versions.null_pointer(key), versions.inline_name(key)]
        names += [versions.record_name(key, v) for v in sks]
        prefix = versions.record_prefix(key)
        while True:
            results, version = await self.backend.read_versioned(
                name, [["omap_get", names], ["omap_list", None, 2, prefix]]
            )
            values = {str(k): bytes(v) for k, v in results[0].items()}
            listed = [(str(k)[len(prefix) :], bytes(v)) for k, v in results[1]["entries"]]
            records = {sk: Entry.from_bytes(raw) for sk, raw in listed}
            for sk in sks:
                raw = values.get(versions.record_name(key, sk))
                if raw is not None:
                    records[sk] = Entry.from_bytes(raw)
            pointer = values.get(versions.null_pointer(key))
            null_sk = pointer.decode() if pointer is not None else None
            if null_sk is not None and null_sk not in records:
                record = versions.record_name(key, null_sk)
                more, again = await self.backend.read_versioned(name, [["omap_get", [record]]])
                if again != version:
                    continue  # changed between the two reads
                raw = more[0].get(record)
                if raw is not None:
                    records[null_sk] = Entry.from_bytes(bytes(raw))
            snap = versions.Snapshot(
                key=key,
                current=_with_data(values, key),
                null_sk=null_sk,
                newest=tuple(sk for sk, _ in listed),
                records=records,
            )
            return snap, version

    async def _change(
        self,
        bucket: Bucket,
        key: str,
        compute: Callable[[versions.Snapshot], versions.Change],
        wanted: Sequence[str | None] = (),
    ) -> versions.Change:
        """Apply ``compute(snapshot)`` atomically (reading again while others get in);
        then free the data it let go."""

        async def action(b: Bucket) -> versions.Change:
            name = self._shard(b, key)
            for attempt in range(MAX_CAS_ATTEMPTS):
                snap, version = await self._snapshot(name, key, wanted)
                change = compute(snap)
                if snap.current is not None and snap.current.inline and key in change.writes:
                    # Its bytes went along into whatever was copied from it.
                    change.writes[versions.inline_name(key)] = None
                if await self.backend.write_if_unchanged(name, change.writes, version):
                    return change
                await contention_pause(attempt)
            raise gave_up(name)

        change = await self._on_bucket(bucket, action)
        for entry in change.freed:
            await self._free(entry)
        return change

    # --- changing one key ------------------------------------------------------------------

    async def publish(
        self,
        bucket: Bucket,
        key: str,
        entry: Entry,
        check: Callable[[Entry | None], None] | None = None,
    ) -> Entry:
        """Make ``entry`` the key's object and return it as published (with its version).

        ``check`` (which raises to refuse) sees the current object first, atomically with
        respect to other writers. Data the key no longer needs is queued for GC."""
        if bucket.versioning:
            mode = bucket.versioning

            def add(snap: versions.Snapshot) -> versions.Change:
                if check is not None:
                    check(_visible(snap.current))
                return versions.add_version(snap, entry, mode, time.time_ns())

            published = (await self._change(bucket, key, add)).result
            assert published is not None
            return published
        writes = _unversioned_writes(key, entry)
        if check is None:

            async def swap(b: Bucket) -> bytes | None:
                return await self.backend.swap(self._shard(b, key), key, writes[key], writes)

            await self._retire(await self._on_bucket(bucket, swap))
            return entry
        checked = check

        def update(current: dict[str, bytes]) -> tuple[dict[str, bytes | None], bytes | None]:
            raw = current.get(key)
            checked(_visible(Entry.from_bytes(raw) if raw is not None else None))
            return writes, raw

        async def action(b: Bucket) -> bytes | None:
            return await self.backend.compare_and_set(
                self._shard(b, key), [key], update, must_exist=True
            )

        await self._retire(await self._on_bucket(bucket, action))
        return entry

    async def update(
        self,
        bucket: Bucket,
        key: str,
        change: Callable[[Entry | None], Entry],
        version: str | None = None,
    ) -> Entry:
        """Replace a version's entry by ``change(entry)`` (same data: nothing is freed).
        ``change`` sees None for a missing version or a delete marker, and must raise."""
        if bucket.versioning or version is not None:

            def modify(snap: versions.Snapshot) -> versions.Change:
                target = snap.lookup(version)
                if target is None or target.delete_marker:
                    change(None)
                return versions.modify_version(snap, version, change)

            result = (await self._change(bucket, key, modify, [version])).result
            assert result is not None
            return result

        def update(current: dict[str, bytes]) -> tuple[dict[str, bytes | None], Entry]:
            raw = current.get(key)
            new = change(_visible(Entry.from_bytes(raw) if raw is not None else None))
            return {key: new.to_bytes()}, new

        async def action(b: Bucket) -> Entry:
            return await self.backend.compare_and_set(
                self._shard(b, key), [key], update, must_exist=True
            )

        return await self._on_bucket(bucket, action)

    async def delete(
        self,
        bucket: Bucket,
        key: str,
        check: Callable[[Entry | None], None] | None = None,
        *,
        owner: tuple[str, str] = ("", ""),
    ) -> Entry | None:
        """Delete the key's object: remove it, or in a versioned bucket add a delete
        marker made by ``owner`` (name, id) and return it. ``check`` as for publish."""
        if bucket.versioning:
            mode = bucket.versioning

            def add(snap: versions.Snapshot) -> versions.Change:
                if check is not None:
                    check(_visible(snap.current))
                marker = versions.delete_marker(owner[0], owner[1], time.time())
                return versions.add_version(snap, marker, mode, time.time_ns())

            return (await self._change(bucket, key, add)).result
        removal = _unversioned_writes(key, None)
        if check is None:

            async def swap(b: Bucket) -> bytes | None:
                return await self.backend.swap(self._shard(b, key), key, None, removal)

            await self._retire(await self._on_bucket(bucket, swap))
            return None
        checked = check

        def update(current: dict[str, bytes]) -> tuple[dict[str, bytes | None], bytes | None]:
            raw = current.get(key)
            checked(_visible(Entry.from_bytes(raw) if raw is not None else None))
            return (removal if raw is not None else {}), raw

        async def action(b: Bucket) -> bytes | None:
            return await self.backend.compare_and_set(
                self._shard(b, key), [key], update, must_exist=True
            )

        await self._retire(await self._on_bucket(bucket, action))
        return None

    async def delete_version(
        self,
        bucket: Bucket,
        key: str,
        version: str,
        check: Callable[[Entry], None] | None = None,
    ) -> Entry | None:
        """Delete one version for good (its data is freed); returns it, or None when the
        key has no such version. ``check`` may refuse (by raising) once it sees it."""

        def remove(snap: versions.Snapshot) -> versions.Change:
            target = snap.lookup(version)
            if check is not None and target is not None:
                check(target)
            return versions.remove_version(snap, version)

        return (await self._change(bucket, key, remove, [version])).result

    async def _retire(self, raw: bytes | None) -> None:
        """Free the data of an entry an unversioned change replaced, unless a version
        record owns it (a bucket versioned since this gateway last looked)."""
        if raw is None:
            return
        try:
            old = Entry.from_bytes(raw)
        except layout.CorruptRecord:
            return
        if old.version is None:
            await self._free(old)

    async def _free(self, entry: Entry) -> None:
        garbage = Garbage.of_entry(entry)
        if garbage is not None:
            await self.collector.discard(garbage)

    # --- listings ------------------------------------------------------------------------

    async def page(
        self,
        bucket: Bucket,
        *,
        prefix: str,
        delimiter: str,
        marker: str | None,
        max_keys: int,
    ) -> listing.Page:
        """A page of the current objects (delete markers left out), in key order."""
        if "\x00" in prefix:
            return listing.Page()  # no key holds a NUL
        versioned = bool(bucket.versioning)

        async def action(b: Bucket) -> listing.Page:
            names = b.shard_names()

            async def fetch(
                shard: int, after: str | None, limit: int
            ) -> tuple[list[tuple[str, bytes]], bool]:
                return await self._current_entries(
                    names[shard], after, limit, prefix, versioned, lambda e: e.delete_marker
                )

            return await listing.list_page(
                fetch,
                len(names),
                prefix=prefix,
                delimiter=delimiter,
                marker=marker,
                max_keys=max_keys,
            )

        return await self._on_bucket(bucket, action)

    async def _current_entries(
        self,
        name: str,
        after: str | None,
        limit: int,
        prefix: str,
        filtered: bool,
        leave_out: Callable[[Entry], bool],
    ) -> tuple[list[tuple[str, bytes]], bool]:
        """Keys' entries after ``after`` (never version records); with ``filtered``, those
        ``leave_out`` refuses are skipped, reading on until one is kept or none is left."""
        start = after if after is not None and after > versions.KEYS_START else versions.KEYS_START
        while True:
            entries, more = await self.backend.omap_page(name, start, limit, prefix)
            if not filtered:
                return entries, more
            kept = [(k, v) for k, v in entries if not leave_out(Entry.from_bytes(v))]
            if kept or not more or not entries:
                return kept, more
            start = entries[-1][0]

    async def version_page(
        self,
        bucket: Bucket,
        *,
        prefix: str,
        delimiter: str,
        after: str | None,
        max_keys: int,
    ) -> listing.Page:
        """A page of versions, in key order and newest first within a key. Each is listed
        as ``<key>\\0<sk>`` (a record) or ``<key>\\0`` (an unrecorded null version), and
        ``after`` is such a name."""
        if "\x00" in prefix:
            return listing.Page()
        kinds = 2 if bucket.versioning else 1  # a bucket never versioned has no records

        async def action(b: Bucket) -> listing.Page:
            names = b.shard_names()

            async def fetch(
                stream: int, start: str | None, limit: int
            ) -> tuple[list[tuple[str, bytes]], bool]:
                shard, kind = divmod(stream, kinds)
                if kind == 0:
                    entries, more = await self._current_entries(
                        names[shard],
                        start,
                        limit,
                        prefix,
                        kinds == 2,
                        lambda e: e.version is not None,
                    )
                    return [(k + "\x00", v) for k, v in entries], more
                entries, more = await self.backend.omap_page(
                    names[shard],
                    None if start is None else versions.RECORD + start,
                    limit,
                    versions.RECORD + prefix,
                )
                return [(k[len(versions.RECORD) :], v) for k, v in entries], more

            return await listing.list_page(
                fetch,
                len(names) * kinds,
                prefix=prefix,
                delimiter=delimiter,
                marker=after,
                max_keys=max_keys,
                key_of=lambda name: name[: name.index("\x00")],
            )

        return await self._on_bucket(bucket, action)

    async def is_empty(self, bucket: Bucket) -> bool:
        page = await self.page(bucket, prefix="", delimiter="", marker=None, max_keys=1)
        return not page.contents


def _with_data(values: dict[str, bytes], key: str) -> Entry | None:
    """The key's entry from what was read of ``<key>`` and ``\\0d<key>``: an inline
    object's with its bytes."""
    raw = values.get(key)
    if raw is None:
        return None
    entry = Entry.from_bytes(raw)
    if entry.inline and entry.data is None:
        data = values.get(versions.inline_name(key))
        if data is None:
            raise layout.CorruptRecord(f"the bytes of inline object {key!r} are missing")
        entry = replace(entry, data=bytes(data))
    return entry


def _unversioned_writes(key: str, entry: Entry | None) -> dict[str, bytes | None]:
    """What makes ``entry`` (None: nothing) the key's object in a bucket never versioned:
    an inline object's bytes go beside its entry, never inside it (listings read entries)."""
    if entry is None:
        return {key: None, versions.inline_name(key): None}
    if entry.inline:
        return {key: replace(entry, data=None).to_bytes(), versions.inline_name(key): entry.data}
    return {key: entry.to_bytes(), versions.inline_name(key): None}


def _visible(entry: Entry | None) -> Entry | None:
    """What conditions see of a key's entry: a delete marker is no object."""
    return None if entry is None or entry.delete_marker else entry
