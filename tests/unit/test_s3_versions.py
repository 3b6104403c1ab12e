"""The changes of versioned buckets, computed without I/O: what each one writes and frees,
applied to an in-memory shard so that sequences of changes can be checked whole."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from store.gateways.s3 import versions
from store.gateways.s3.layout import Entry
from store.gateways.s3.versions import ENABLED, NULL, SUSPENDED, Snapshot

KEY = "photos/cat.jpg"
_clock = itertools.count(1_700_000_000_000_000_000, 1_000_000)


def obj(name: str, mtime: float = 1_700_000_000.0) -> Entry:
    return Entry(size=1, etag=name, mtime=mtime, owner="o", owner_id="oi", head=f"data.{name}")


class Shard:
    """One index shard's omap, and the data the changes freed."""

    def __init__(self) -> None:
        self.omap: dict[str, bytes] = {}
        self.freed: list[str] = []

    def snapshot(self, key: str = KEY, wanted: tuple[str, ...] = ()) -> Snapshot:
        prefix = versions.record_prefix(key)
        listed = sorted(k for k in self.omap if k.startswith(prefix))[:2]
        records = {k[len(prefix) :]: Entry.from_bytes(self.omap[k]) for k in listed}
        pointer = self.omap.get(versions.null_pointer(key))
        null_sk = pointer.decode() if pointer is not None else None
        for sk in (*wanted, null_sk):
            if sk is not None and versions.record_name(key, sk) in self.omap:
                records[sk] = Entry.from_bytes(self.omap[versions.record_name(key, sk)])
        current = self.omap.get(key)
        return Snapshot(
            key=key,
            current=Entry.from_bytes(current) if current is not None else None,
            null_sk=null_sk,
            newest=tuple(k[len(prefix) :] for k in listed),
            records=records,
        )

    def apply(self, change: versions.Change) -> Entry | None:
        for name, value in change.writes.items():
            if value is None:
                self.omap.pop(name, None)
            else:
                self.omap[name] = value
        self.freed.extend(e.etag for e in change.freed)
        return change.result

    def put(self, name: str, mode: str, now: int | None = None) -> Entry:
        change = versions.add_version(self.snapshot(), obj(name), mode, now or next(_clock))
        published = self.apply(change)
        assert published is not None
        return published

    def delete(self, mode: str) -> Entry:
        marker = versions.delete_marker("o", "oi", 1.0)
        result = self.apply(versions.add_version(self.snapshot(), marker, mode, next(_clock)))
        assert result is not None
        return result

    def remove(self, version: str) -> Entry | None:
        return self.apply(versions.remove_version(self.snapshot(wanted=(version,)), version))

    def history(self) -> list[tuple[str, str]]:
        """(version id, etag or "marker"), newest first."""
        prefix = versions.record_prefix(KEY)
        found = []
        current = self.omap.get(KEY)
        if current is not None and Entry.from_bytes(current).version is None:
            found.append((NULL, Entry.from_bytes(current).etag))
        for name in sorted(k for k in self.omap if k.startswith(prefix)):
            entry = Entry.from_bytes(self.omap[name])
            found.append(
                (versions.version_id(entry), "marker" if entry.delete_marker else entry.etag)
            )
        return found

    def current(self) -> str | None:
        raw = self.omap.get(KEY)
        if raw is None:
            return None
        entry = Entry.from_bytes(raw)
        return "marker" if entry.delete_marker else entry.etag


def test_enabled_bucket_keeps_every_version_newest_first() -> None:
    shard = Shard()
    ids = [versions.version_id(shard.put(name, ENABLED)) for name in "abc"]
    assert len(set(ids)) == 3 and all(versions.is_version_id(i) and i != NULL for i in ids)
    assert shard.history() == [(ids[2], "c"), (ids[1], "b"), (ids[0], "a")]
    assert shard.current() == "c" and shard.freed == []


def test_new_versions_are_newest_even_when_the_clock_goes_back() -> None:
    shard = Shard()
    first = shard.put("a", ENABLED, now=2_000_000_000_000_000_000)
    second = shard.put("b", ENABLED, now=1_000_000_000_000_000_000)
    assert [etag for _, etag in shard.history()] == ["b", "a"]
    assert second.version is not None and first.version is not None
    assert second.version < first.version


def test_object_from_before_versioning_becomes_the_null_version() -> None:
    shard = Shard()
    shard.omap[KEY] = obj("old").to_bytes()  # written while the bucket was not versioned
    new = shard.put("new", ENABLED)
    assert shard.history() == [(versions.version_id(new), "new"), (NULL, "old")]
    assert shard.freed == []
    snap = shard.snapshot()
    null_version = snap.lookup(NULL)
    assert null_version is not None and null_version.etag == "old"


def test_suspended_bucket_replaces_the_null_version_and_frees_it() -> None:
    shard = Shard()
    shard.omap[KEY] = obj("old").to_bytes()
    kept = shard.put("kept", ENABLED)
    assert shard.history() == [(versions.version_id(kept), "kept"), (NULL, "old")]
    shard.put("n1", SUSPENDED)  # replaces the null version, "old"
    assert shard.history() == [(NULL, "n1"), (versions.version_id(kept), "kept")]
    assert shard.freed == ["old"]
    shard.put("n2", SUSPENDED)
    assert shard.history() == [(NULL, "n2"), (versions.version_id(kept), "kept")]
    assert shard.freed == ["old", "n1"]


def test_suspended_write_over_an_unrecorded_object_frees_it() -> None:
    shard = Shard()
    shard.omap[KEY] = obj("old").to_bytes()
    shard.put("new", SUSPENDED)
    assert shard.history() == [(NULL, "new")] and shard.freed == ["old"]


def test_delete_adds_a_marker_and_deleting_the_marker_brings_the_object_back() -> None:
    shard = Shard()
    a = shard.put("a", ENABLED)
    marker = shard.delete(ENABLED)
    assert marker.delete_marker and shard.current() == "marker"
    assert shard.history() == [
        (versions.version_id(marker), "marker"),
        (versions.version_id(a), "a"),
    ]
    removed = shard.remove(versions.version_id(marker))
    assert removed is not None and removed.delete_marker
    assert shard.current() == "a" and shard.freed == []


def test_removing_the_current_version_makes_the_next_one_current() -> None:
    shard = Shard()
    a, b, c = (shard.put(name, ENABLED) for name in "abc")
    shard.remove(versions.version_id(b))  # not current: the current stays
    assert shard.current() == "c" and shard.freed == ["b"]
    shard.remove(versions.version_id(c))
    assert shard.current() == "a" and shard.freed == ["b", "c"]
    shard.remove(versions.version_id(a))
    assert shard.current() is None and shard.omap == {}


def test_removing_the_null_version_clears_its_pointer() -> None:
    shard = Shard()
    shard.put("n", SUSPENDED)
    b = shard.put("b", ENABLED)
    assert shard.remove(NULL) is not None
    assert shard.history() == [(versions.version_id(b), "b")]
    assert versions.null_pointer(KEY) not in shard.omap and shard.freed == ["n"]
    assert shard.remove(NULL) is None  # nothing left to remove: nothing changes


def test_unknown_versions_change_nothing() -> None:
    shard = Shard()
    shard.put("a", ENABLED)
    before = dict(shard.omap)
    assert shard.remove("0" * 16 + "abcdef01") is None
    assert shard.omap == before


def test_suspended_delete_is_a_null_marker_replacing_the_null_version() -> None:
    shard = Shard()
    a = shard.put("a", ENABLED)
    shard.put("n", SUSPENDED)
    marker = shard.delete(SUSPENDED)
    assert versions.version_id(marker) == NULL and marker.delete_marker
    assert shard.history() == [(NULL, "marker"), (versions.version_id(a), "a")]
    assert shard.freed == ["n"]


def test_metadata_changes_reach_the_record_and_the_current_entry() -> None:
    shard = Shard()
    a = shard.put("a", ENABLED)
    b = shard.put("b", ENABLED)
    tag = _tagged
    assert a.version is not None and b.version is not None
    shard.apply(versions.modify_version(shard.snapshot(wanted=(a.version,)), a.version, tag))
    assert Entry.from_bytes(shard.omap[versions.record_name(KEY, a.version)]).tags == {"t": "1"}
    assert Entry.from_bytes(shard.omap[KEY]).tags == {}
    shard.apply(versions.modify_version(shard.snapshot(), None, tag))
    assert Entry.from_bytes(shard.omap[KEY]).tags == {"t": "1"}
    assert Entry.from_bytes(shard.omap[versions.record_name(KEY, b.version)]).tags == {"t": "1"}


def _tagged(entry: Entry) -> Entry:
    return replace(entry, tags={"t": "1"})


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("null", True),
        ("0123456789abcdef01234567", True),
        ("0123456789abcdefnull", False),  # a record name, not an id
        ("0123456789ABCDEF01234567", False),
        ("", False),
        ("abc", False),
    ],
)
def test_version_ids(text: str, valid: bool) -> None:
    assert versions.is_version_id(text) == valid


def test_record_names_sort_before_every_key() -> None:
    names = [versions.record_name("\U0010ffff" * 3, "f" * 24), versions.null_pointer("zz")]
    for name in names:
        assert name < versions.KEYS_START < "\x01" < "a"
