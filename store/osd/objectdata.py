"""One object's rows in the daemon's SQLite database, and the operations that act on them.

Theory of operation
-------------------
An object is a row of ``objects`` (its header: pool, name, PG, size, version, mtime,
and whether it is live or a tombstone) plus rows of ``blockmap``, ``xattrs`` and
``omap`` keyed by the header's integer id, the oid.

The data lives in blocks of the data file, each with its checksum
(:mod:`store.osd.objectblocks`); the ``blocks`` of an ``ObjectRows`` read and write it.

Nothing here commits: the caller owns the transaction (and its savepoints).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import xxhash

from store.errors import Code
from store.osd.blockmap import LAST_CHUNK
from store.osd.blockspace import BlockSpace
from store.osd.objectblocks import ObjectBlocks
from store.osd.ops import (
    Create,
    Delete,
    GetXattrs,
    OmapClear,
    OmapGet,
    OmapList,
    OmapRm,
    OmapSet,
    Op,
    Read,
    RmXattr,
    SetXattr,
    Stat,
    Truncate,
    Write,
    WriteFull,
    Zero,
)
from store.osd.txns import OpFailed

MIN_BLOCK_SIZE = 512  # 128 MiB / 512 B = 2**18 blocks, well inside the 24 index bits
MAX_BLOCK_SIZE = 65536

OBJECT_SCHEMA = """
CREATE TABLE objects (
    oid INTEGER PRIMARY KEY,
    pool INTEGER NOT NULL,
    name TEXT NOT NULL,
    pg INTEGER NOT NULL,
    live INTEGER NOT NULL,
    size INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    mtime REAL NOT NULL,
    UNIQUE (pool, name)
);
CREATE INDEX objects_listing ON objects (pool, pg, name) WHERE live = 1;
CREATE INDEX objects_tombstones ON objects (pool, pg, seq) WHERE live = 0;
CREATE TABLE blockmap (id INTEGER PRIMARY KEY, map BLOB NOT NULL);
CREATE TABLE xattrs (
    oid INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (oid, key)
) WITHOUT ROWID;
CREATE TABLE omap (
    oid INTEGER NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (oid, key)
) WITHOUT ROWID;
"""

_OBJECT_GET = (
    "SELECT oid, pg, live, size, epoch, seq, mtime FROM objects WHERE pool = ? AND name = ?"
)
_OBJECT_NEW = (
    "INSERT INTO objects (pool, name, pg, live, size, epoch, seq, mtime)"
    " VALUES (?, ?, ?, 0, 0, 0, 0, 0)"
)
_OBJECT_PUT = (
    "UPDATE objects SET pg = ?, live = ?, size = ?, epoch = ?, seq = ?, mtime = ? WHERE oid = ?"
)
_OBJECT_FORGET = "DELETE FROM objects WHERE oid = ?"
_XATTR_ALL = "SELECT key, value FROM xattrs WHERE oid = ? ORDER BY key"
_XATTR_PUT = "INSERT OR REPLACE INTO xattrs (oid, key, value) VALUES (?, ?, ?)"
_XATTR_DROP = "DELETE FROM xattrs WHERE oid = ? AND key = ?"
_XATTR_CLEAR = "DELETE FROM xattrs WHERE oid = ?"
_OMAP_GET = "SELECT value FROM omap WHERE oid = ? AND key = ?"
_OMAP_ALL = "SELECT key, value FROM omap WHERE oid = ? ORDER BY key"
_OMAP_FROM = "SELECT key, value FROM omap WHERE oid = ? AND key >= ? ORDER BY key LIMIT ?"
_OMAP_AFTER = "SELECT key, value FROM omap WHERE oid = ? AND key > ? ORDER BY key LIMIT ?"
_OMAP_PUT = "INSERT OR REPLACE INTO omap (oid, key, value) VALUES (?, ?, ?)"
_OMAP_DROP = "DELETE FROM omap WHERE oid = ? AND key = ?"
_OMAP_CLEAR = "DELETE FROM omap WHERE oid = ?"


@dataclass
class ObjectHeader:
    """The ``objects`` row of one object as a transaction sees and changes it."""

    pool: int
    name: str
    oid: int | None  # None while the object has no row at all
    pg: int
    live: bool
    size: int
    version: tuple[int, int]
    mtime: float

    def visible_version(self) -> tuple[int, int]:
        """The version a condition compares against: (0, 0) unless the object is live."""
        return self.version if self.live else (0, 0)


class ObjectRows:
    """Reads and changes objects through one SQLite connection."""

    def __init__(
        self,
        db: sqlite3.Connection,
        space: BlockSpace,
        on_checksum_error: Callable[[], None],
    ) -> None:
        self._db = db
        self.blocks = ObjectBlocks(db, space, on_checksum_error)

    # --- headers ---------------------------------------------------------------------

    def load(self, pool: int, name: str) -> ObjectHeader:
        row = self._db.execute(_OBJECT_GET, (pool, name)).fetchone()
        if row is None:
            return ObjectHeader(pool, name, None, -1, False, 0, (0, 0), 0.0)
        oid, pg, live, size, epoch, seq, mtime = row
        return ObjectHeader(pool, name, oid, pg, bool(live), size, (epoch, seq), mtime)

    def save(self, obj: ObjectHeader) -> None:
        oid = self._materialize(obj)
        epoch, seq = obj.version
        self._db.execute(_OBJECT_PUT, (obj.pg, int(obj.live), obj.size, epoch, seq, obj.mtime, oid))

    def forget(self, obj: ObjectHeader) -> None:
        """Remove every trace of the object, tombstone included."""
        if obj.oid is not None:
            self._clear(obj.oid)
            self._db.execute(_OBJECT_FORGET, (obj.oid,))
        obj.oid, obj.live, obj.size, obj.version = None, False, 0, (0, 0)

    def _materialize(self, obj: ObjectHeader) -> int:
        if obj.oid is None:
            cursor = self._db.execute(_OBJECT_NEW, (obj.pool, obj.name, max(obj.pg, 0)))
            assert cursor.lastrowid is not None
            obj.oid = cursor.lastrowid
        return obj.oid

    def _clear(self, oid: int) -> None:
        self.blocks.drop(oid, 0, LAST_CHUNK)
        self._db.execute(_XATTR_CLEAR, (oid,))
        self._db.execute(_OMAP_CLEAR, (oid,))

    # --- operations ------------------------------------------------------------------

    def run(
        self, obj: ObjectHeader, ops: Sequence[Op], *, replica: bool, borrow: bool = False
    ) -> list[object]:
        """Apply ``ops`` in order; results align with ``ops`` (None for a mutating op).

        A replica replays what its primary already accepted, so it does not judge:
        reads are skipped, ``create`` is never exclusive and ``delete`` of an absent
        object is fine. Raises OpFailed or ChecksumError; the caller rolls back.
        ``borrow`` lets a read answer a view of the thread's read buffer
        (``ObjectBlocks.read_range``): only for a lone read whose result is used at once.
        """
        results: list[object] = []
        for op in ops:
            if not op.MUTATING:
                results.append(None if replica else self._read_op(obj, op, borrow))
                continue
            if isinstance(op, Delete):
                if not obj.live and not replica:
                    raise OpFailed(Code.ENOENT, f"object {obj.name!r} does not exist")
                if obj.oid is not None:
                    self._clear(obj.oid)
                obj.live, obj.size = False, 0
            else:
                if isinstance(op, Create) and op.exclusive and obj.live and not replica:
                    raise OpFailed(Code.EEXIST, f"object {obj.name!r} already exists")
                if not obj.live:
                    obj.live, obj.size = True, 0
                self._materialize(obj)
                self._write_op(obj, op)
            results.append(None)
        return results

    def _read_op(self, obj: ObjectHeader, op: Op, borrow: bool = False) -> object:
        if not obj.live:
            raise OpFailed(Code.ENOENT, f"object {obj.name!r} does not exist")
        match op:
            case Read(offset, length):
                return self.blocks.read_range(obj, offset, length, borrow=borrow)
            case Stat():
                return {"size": obj.size, "version": list(obj.version), "mtime": obj.mtime}
            case GetXattrs():
                return self.xattrs(obj)
            case OmapGet(keys):
                return self._omap_get(obj, keys)
            case OmapList(start_after, limit, prefix):
                return self._omap_list(obj, start_after, limit, prefix)
        raise AssertionError(f"not a read operation: {op!r}")

    def _write_op(self, obj: ObjectHeader, op: Op) -> None:
        oid = obj.oid
        assert oid is not None
        match op:
            case Create():
                pass
            case Write(offset, data, sums):
                self.blocks.write(obj, offset, data, sums)
            case WriteFull(data, sums):
                self.blocks.write_full(obj, data, sums)
            case Truncate(size):
                self.blocks.truncate(obj, size)
            case Zero(offset, length):
                self.blocks.zero(obj, offset, length)
            case SetXattr(key, value):
                self._db.execute(_XATTR_PUT, (oid, key, value))
            case RmXattr(key):
                self._db.execute(_XATTR_DROP, (oid, key))
            case OmapSet(entries):
                self._db.executemany(_OMAP_PUT, ((oid, k, v) for k, v in entries.items()))
            case OmapRm(keys):
                self._db.executemany(_OMAP_DROP, ((oid, k) for k in keys))
            case OmapClear():
                self._db.execute(_OMAP_CLEAR, (oid,))
            case _:
                raise AssertionError(f"not a mutating operation: {op!r}")

    # --- attributes and omap ---------------------------------------------------------

    def xattrs(self, obj: ObjectHeader) -> dict[str, bytes]:
        if obj.oid is None:
            return {}
        return dict(self._db.execute(_XATTR_ALL, (obj.oid,)).fetchall())

    def omap(self, obj: ObjectHeader) -> dict[str, bytes]:
        if obj.oid is None:
            return {}
        return dict(self._db.execute(_OMAP_ALL, (obj.oid,)).fetchall())

    def _omap_get(self, obj: ObjectHeader, keys: Iterable[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        if obj.oid is None:
            return found
        for key in keys:
            row = self._db.execute(_OMAP_GET, (obj.oid, key)).fetchone()
            if row is not None:
                found[key] = row[0]
        return found

    def _omap_list(
        self, obj: ObjectHeader, start_after: str | None, limit: int, prefix: str
    ) -> dict[str, object]:
        entries: list[list[object]] = []
        more = False
        if obj.oid is None:
            return {"entries": entries, "more": more}
        # Keys sharing a prefix are contiguous in code-point order (which is SQLite's
        # order for UTF-8 text), so the scan starts at the later of the two bounds and
        # stops at the first key without the prefix.
        if start_after is not None and start_after >= prefix:
            rows = self._db.execute(_OMAP_AFTER, (obj.oid, start_after, limit + 1))
        else:
            rows = self._db.execute(_OMAP_FROM, (obj.oid, prefix, limit + 1))
        for key, value in rows:
            if not key.startswith(prefix):
                break
            if len(entries) == limit:
                more = True
                break
            entries.append([key, value])
        return {"entries": entries, "more": more}

    def install(
        self,
        obj: ObjectHeader,
        *,
        exists: bool,
        data: bytes,
        xattrs: dict[str, bytes],
        omap: dict[str, bytes],
    ) -> None:
        """Replace the object's whole content (recovery); the caller sets version and mtime."""
        oid = self._materialize(obj)
        self._clear(oid)
        obj.live, obj.size = exists, 0
        if exists:
            self.blocks.write(obj, 0, data)
            self._db.executemany(_XATTR_PUT, ((oid, k, v) for k, v in xattrs.items()))
            self._db.executemany(_OMAP_PUT, ((oid, k, v) for k, v in omap.items()))

    # --- digests (scrub) -------------------------------------------------------------

    def xattrs_digest(self, obj: ObjectHeader) -> int:
        if obj.oid is None:
            return pairs_digest(())
        return pairs_digest(self._db.execute(_XATTR_ALL, (obj.oid,)))

    def omap_digest(self, obj: ObjectHeader) -> tuple[int, int]:
        """(digest, bytes) of the omap, streamed from the database in key order."""
        if obj.oid is None:
            return pairs_digest(()), 0
        counted = _Counted(self._db.execute(_OMAP_ALL, (obj.oid,)))
        return pairs_digest(counted), counted.bytes

    def data_digest(self, obj: ObjectHeader, window: int = 1 << 20) -> int:
        """xxh3_64 of the whole content (holes as zeros), every stored block re-read and
        verified against its checksum; raises ChecksumError (or OSError) otherwise."""
        hasher = xxhash.xxh3_64()
        for offset in range(0, obj.size, window):
            hasher.update(self.blocks.read(obj, offset, window))
        return hasher.intdigest()


def pairs_digest(pairs: Iterable[tuple[str, bytes]]) -> int:
    """xxh3_64 of key/value pairs in the order given, each length-prefixed so that no two
    different sequences of pairs hash the same bytes."""
    hasher = xxhash.xxh3_64()
    for key, value in pairs:
        raw = key.encode()
        hasher.update(len(raw).to_bytes(4, "little") + raw + len(value).to_bytes(4, "little"))
        hasher.update(value)
    return hasher.intdigest()


class _Counted:
    """Key/value pairs passed through, counting their bytes."""

    def __init__(self, pairs: Iterable[tuple[str, bytes]]) -> None:
        self._pairs = pairs
        self.bytes = 0

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        for key, value in self._pairs:
            self.bytes += len(key) + len(value)
            yield key, value
