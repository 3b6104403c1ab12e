"""Versioned buckets: where versions live in an index shard, and what each change writes.

Theory of operation
-------------------
Besides a key's entry ``<key>`` (its current version: what GET and listings see), a
versioned bucket's index shard keeps one *record* per version, under names no key can
take, since keys never hold a NUL:

``\\0v<key>\\0<sk>``  a version (an object or a delete marker): a copy of its entry
``\\0n<key>``        the ``sk`` of the key's null version, when that one is recorded
``\\0d<key>``        the bytes of the key's entry when that is an inline object

An ``sk`` is 16 hex digits of 2^64 - 1 minus nanoseconds since the epoch, then 8 random
hex digits, or ``null`` for the null version (the one a bucket with versioning suspended
writes): a key's records list newest first. A version's id is its ``sk``, or ``null``.
Every change makes the version it adds newer than every record of the key, so the key's
entry is always its newest version, whatever the gateways' clocks say.

An entry whose ``version`` is None was written while the bucket was not versioned yet
(or by a gateway that did not know yet): it is the key's null version, unrecorded.
Whoever replaces it records it first, or frees it when it is the null version being
replaced.

An inline object's bytes are kept beside the unrecorded entry that owns them
(``\\0d<key>``) and inside every record or entry copied from it: the index reads them
into the snapshot, so the records a change writes carry them, and the change removes
``\\0d<key>`` whenever it rewrites the key's entry.

Data belongs to a version's record, or to an unrecorded entry, and is freed only when its
owner goes: a version deleted by id, a null version replaced, or (in a bucket never
versioned) an entry overwritten or deleted.

Each change is computed here, without I/O, from a :class:`Snapshot` of the key (its entry,
its null pointer, its two newest records and any record the change names) and applied by
the index on condition that the shard did not change since it was read.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from store.gateways.s3.layout import Entry

RECORD = "\x00v"
NULL_POINTER = "\x00n"
INLINE_DATA = "\x00d"  # + key: the bytes of the key's entry when it is inline
# Keys hold no NUL, so every key sorts after this and every record name before it.
KEYS_START = "\x00\U0010ffff"
ENABLED = "Enabled"
SUSPENDED = "Suspended"
NULL = "null"

_TOP = (1 << 64) - 1
_SK = re.compile(r"[0-9a-f]{16}([0-9a-f]{8}|null)")


def record_prefix(key: str) -> str:
    return f"{RECORD}{key}\x00"


def record_name(key: str, sk: str) -> str:
    return record_prefix(key) + sk


def null_pointer(key: str) -> str:
    return NULL_POINTER + key


def inline_name(key: str) -> str:
    return INLINE_DATA + key


def is_sk(text: str) -> bool:
    return _SK.fullmatch(text) is not None


def version_id(entry: Entry) -> str:
    return NULL if entry.version is None or entry.version.endswith(NULL) else entry.version


def is_version_id(text: str) -> bool:
    """A version id this gateway could have given (so that looking it up makes sense)."""
    return text == NULL or (is_sk(text) and not text.endswith(NULL))


def new_sk(now_ns: int, newer_than: str | None, *, null: bool) -> str:
    """The sk of a version made now, newer than the record ``newer_than``."""
    inverted = _TOP - now_ns
    if newer_than is not None:
        inverted = min(inverted, int(newer_than[:16], 16) - 1)
    return f"{max(inverted, 0):016x}{NULL if null else secrets.token_hex(4)}"


def delete_marker(owner: str, owner_id: str, mtime: float) -> Entry:
    return Entry(
        size=0,
        etag="",
        mtime=mtime,
        owner=owner,
        owner_id=owner_id,
        head=None,
        delete_marker=True,
    )


@dataclass(frozen=True)
class Snapshot:
    """What a change needs to know about one key, read in one request."""

    key: str
    current: Entry | None
    null_sk: str | None
    newest: tuple[str, ...]  # the sks of the newest records (at most two), newest first
    records: dict[str, Entry]  # sk -> record: the newest ones and those asked for

    @property
    def unrecorded(self) -> Entry | None:
        """The current entry when it is an unrecorded null version."""
        if self.current is not None and self.current.version is None:
            return self.current
        return None

    def lookup(self, version: str | None) -> Entry | None:
        """The version with this id (None: the current one), delete markers included."""
        if version is None:
            return self.current
        if version == NULL:
            if self.unrecorded is not None:
                return self.unrecorded
            return self.records.get(self.null_sk) if self.null_sk is not None else None
        return self.records.get(version)


@dataclass
class Change:
    writes: dict[str, bytes | None] = field(default_factory=dict)  # None removes
    freed: list[Entry] = field(default_factory=list)  # their data goes to GC
    result: Entry | None = None


def _record(change: Change, key: str, entry: Entry) -> None:
    assert entry.version is not None
    raw = entry.to_bytes()
    change.writes[record_name(key, entry.version)] = raw


def add_version(snap: Snapshot, entry: Entry, mode: str, now_ns: int) -> Change:
    """Make ``entry`` (an object or a delete marker) the key's newest version."""
    key = snap.key
    change = Change()
    newer_than = snap.newest[0] if snap.newest else None
    old_null = snap.records.get(snap.null_sk) if snap.null_sk is not None else None
    legacy = snap.unrecorded
    if legacy is not None:
        if mode == ENABLED:
            # It stays, as the null version: recorded between the records and the new one.
            sk = new_sk(int(legacy.mtime * 1e9), newer_than, null=True)
            _record(change, key, replace(legacy, version=sk))
            change.writes[null_pointer(key)] = sk.encode()
            newer_than = sk
        else:
            change.freed.append(legacy)  # it is the null version the new one replaces
    suspended = mode == SUSPENDED
    if old_null is not None and (legacy is not None or suspended):
        assert snap.null_sk is not None
        change.writes[record_name(key, snap.null_sk)] = None  # replaced by another null
        change.freed.append(old_null)
        change.writes.setdefault(null_pointer(key), None)  # unless it points to `legacy`
    new = replace(entry, version=new_sk(now_ns, newer_than, null=suspended))
    assert new.version is not None
    _record(change, key, new)
    change.writes[key] = new.to_bytes()
    if suspended:
        change.writes[null_pointer(key)] = new.version.encode()
    change.result = new
    return change


def remove_version(snap: Snapshot, version: str) -> Change:
    """Delete one version for good; the next newest becomes current if it was."""
    key = snap.key
    change = Change()
    target = snap.lookup(version)
    if target is None:
        return change
    if target.version is None:  # the unrecorded current entry
        was_current = True
    else:
        change.writes[record_name(key, target.version)] = None
        if target.version == snap.null_sk:
            change.writes[null_pointer(key)] = None
        was_current = snap.current is not None and snap.current.version == target.version
    if was_current:
        rest = [sk for sk in snap.newest if sk != target.version]
        change.writes[key] = snap.records[rest[0]].to_bytes() if rest else None
    if not target.delete_marker:
        change.freed.append(target)
    change.result = target
    return change


def modify_version(snap: Snapshot, version: str | None, modify: Callable[[Entry], Entry]) -> Change:
    """Change a version's metadata (tags, ACL): its record, and the entry if current.
    ``modify`` sees the version (never a delete marker) and may raise to refuse."""
    key = snap.key
    change = Change()
    target = snap.lookup(version)
    if target is None or target.delete_marker:
        return change
    new = modify(target)
    if target.version is not None:
        _record(change, key, new)
    if target.version is None or (
        snap.current is not None and snap.current.version == target.version
    ):
        change.writes[key] = new.to_bytes()
    change.result = new
    return change
