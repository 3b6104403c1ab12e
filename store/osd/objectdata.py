"""One object's rows in the daemon's SQLite database, and the operations that act on them.

Theory of operation
-------------------
An object is a row of ``objects`` (its header: pool, name, PG, size, version, mtime,
and whether it is live or a tombstone) plus rows of ``blocks``, ``xattrs`` and
``omap`` keyed by the header's integer id, the oid.

Data is cut into fixed-size blocks. Block ``i`` of object ``oid`` is the ``blocks``
row whose integer key is ``oid << 24 | i``: the table's own rowid b-tree keeps an
object's blocks together and in order, so a range of blocks is a rowid range scan
and no second index has to be written. A block row holds the block's bytes, cut at
the object's end, and their xxh3_64. Bytes a row does not hold (a missing row, or
the part past a short row's end) read as zeros. So a hole costs nothing, truncating
up writes nothing, and a block that ends up all zeros is deleted rather than stored.

Invariant: no block row holds bytes at or past the object's size. Writes only grow
the size, truncating down cuts the block the new end falls in, zero never moves it.

A block's checksum is verified before any of its bytes are used, including the read
half of a read-modify-write, so a damaged block is never served and never gets a
fresh checksum that would make it look good.

Nothing here commits: the caller owns the transaction (and its savepoints).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import xxhash

from store.errors import ChecksumError, Code, StoreError
from store.osd.ops import (
    MAX_OBJECT_SIZE,
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

BLOCK_INDEX_BITS = 24
_BLOCK_MASK = (1 << BLOCK_INDEX_BITS) - 1
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
CREATE TABLE blocks (id INTEGER PRIMARY KEY, csum INTEGER NOT NULL, data BLOB NOT NULL);
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
_BLOCK_GET = "SELECT csum, data FROM blocks WHERE id = ?"
_BLOCK_RANGE = "SELECT id, csum, data FROM blocks WHERE id BETWEEN ? AND ? ORDER BY id"
_BLOCK_PUT = "INSERT OR REPLACE INTO blocks (id, csum, data) VALUES (?, ?, ?)"
_BLOCK_DROP = "DELETE FROM blocks WHERE id = ?"
_BLOCK_DROP_RANGE = "DELETE FROM blocks WHERE id BETWEEN ? AND ?"
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


class OpFailed(StoreError):
    """An operation that cannot apply; the request fails with ``code`` and changes nothing."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def block_checksum(data: bytes | bytearray) -> int:
    """xxh3_64 of a block, as the signed 64-bit integer SQLite stores."""
    digest = xxhash.xxh3_64_intdigest(data)
    return digest - (1 << 64) if digest >> 63 else digest


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
        self, db: sqlite3.Connection, block_size: int, on_checksum_error: Callable[[], None]
    ) -> None:
        self._db = db
        self._bs = block_size
        self._zeros = bytes(block_size)
        self._on_checksum_error = on_checksum_error

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
        base = oid << BLOCK_INDEX_BITS
        self._db.execute(_BLOCK_DROP_RANGE, (base, base | _BLOCK_MASK))
        self._db.execute(_XATTR_CLEAR, (oid,))
        self._db.execute(_OMAP_CLEAR, (oid,))

    # --- operations ------------------------------------------------------------------

    def run(self, obj: ObjectHeader, ops: Sequence[Op], *, replica: bool) -> list[object]:
        """Apply ``ops`` in order; results align with ``ops`` (None for a mutating op).

        A replica replays what its primary already accepted, so it does not judge:
        reads are skipped, ``create`` is never exclusive and ``delete`` of an absent
        object is fine. Raises OpFailed or ChecksumError; the caller rolls back.
        """
        results: list[object] = []
        for op in ops:
            if not op.MUTATING:
                results.append(None if replica else self._read_op(obj, op))
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

    def _read_op(self, obj: ObjectHeader, op: Op) -> object:
        if not obj.live:
            raise OpFailed(Code.ENOENT, f"object {obj.name!r} does not exist")
        match op:
            case Read(offset, length):
                return self.read(obj, offset, length)
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
            case Write(offset, data):
                self.write(obj, offset, data)
            case WriteFull(data):
                self.write_full(obj, data)
            case Truncate(size):
                self.truncate(obj, size)
            case Zero(offset, length):
                self.zero(obj, offset, length)
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
            self.write(obj, 0, data)
            self._db.executemany(_XATTR_PUT, ((oid, k, v) for k, v in xattrs.items()))
            self._db.executemany(_OMAP_PUT, ((oid, k, v) for k, v in omap.items()))

    # --- data ------------------------------------------------------------------------

    def _verified(self, obj: ObjectHeader, block_id: int, csum: int, data: bytes) -> bytes:
        if block_checksum(data) != csum:
            self._on_checksum_error()
            index = block_id & _BLOCK_MASK
            raise ChecksumError(f"checksum mismatch in object {obj.name!r} block {index}")
        return data

    def _load_block(self, obj: ObjectHeader, oid: int, index: int) -> bytes:
        block_id = oid << BLOCK_INDEX_BITS | index
        row = self._db.execute(_BLOCK_GET, (block_id,)).fetchone()
        return b"" if row is None else self._verified(obj, block_id, row[0], row[1])

    def _store_block(self, oid: int, index: int, content: bytes | bytearray) -> None:
        block_id = oid << BLOCK_INDEX_BITS | index
        if content == self._zeros[: len(content)]:
            self._db.execute(_BLOCK_DROP, (block_id,))
        else:
            self._db.execute(_BLOCK_PUT, (block_id, block_checksum(content), content))

    def read(self, obj: ObjectHeader, offset: int, length: int) -> bytes:
        end = min(offset + length, obj.size)
        if offset >= end or obj.oid is None:
            return b""
        bs = self._bs
        base = obj.oid << BLOCK_INDEX_BITS
        out = bytearray(end - offset)
        span = (base | offset // bs, base | (end - 1) // bs)
        for block_id, csum, data in self._db.execute(_BLOCK_RANGE, span):
            self._verified(obj, block_id, csum, data)
            start = (block_id & _BLOCK_MASK) * bs
            lo, hi = max(offset, start), min(end, start + len(data))
            if hi > lo:
                out[lo - offset : hi - offset] = data[lo - start : hi - start]
        return bytes(out)

    def write(self, obj: ObjectHeader, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > MAX_OBJECT_SIZE:
            raise OpFailed(Code.EFBIG, f"write would grow {obj.name!r} past {MAX_OBJECT_SIZE} B")
        if not data:
            return
        oid = self._materialize(obj)
        bs = self._bs
        size = max(obj.size, end)
        view = memoryview(data)
        puts: list[tuple[int, int, bytes]] = []
        for index in range(offset // bs, (end - 1) // bs + 1):
            start = index * bs
            stop = min(start + bs, size)
            lo, hi = max(offset, start), min(end, stop)
            if lo == start and hi == stop:
                content = bytes(view[lo - offset : hi - offset])
            else:
                old = self._load_block(obj, oid, index)
                block = bytearray(stop - start)
                block[: len(old)] = old
                block[lo - start : hi - start] = view[lo - offset : hi - offset]
                content = bytes(block)
            block_id = oid << BLOCK_INDEX_BITS | index
            if content == self._zeros[: len(content)]:
                self._db.execute(_BLOCK_DROP, (block_id,))
            else:
                puts.append((block_id, block_checksum(content), content))
        self._db.executemany(_BLOCK_PUT, puts)
        obj.size = size

    def write_full(self, obj: ObjectHeader, data: bytes) -> None:
        if len(data) > MAX_OBJECT_SIZE:
            raise OpFailed(Code.EFBIG, f"{len(data)} B is more than {MAX_OBJECT_SIZE} B")
        base = self._materialize(obj) << BLOCK_INDEX_BITS
        self._db.execute(_BLOCK_DROP_RANGE, (base, base | _BLOCK_MASK))
        obj.size = 0
        self.write(obj, 0, data)

    def truncate(self, obj: ObjectHeader, size: int) -> None:
        if size > MAX_OBJECT_SIZE:
            raise OpFailed(Code.EFBIG, f"{size} B is more than {MAX_OBJECT_SIZE} B")
        if size < obj.size:
            oid = self._materialize(obj)
            bs = self._bs
            base = oid << BLOCK_INDEX_BITS
            first_gone = -(-size // bs)
            self._db.execute(_BLOCK_DROP_RANGE, (base | first_gone, base | _BLOCK_MASK))
            keep = size % bs
            if keep:
                old = self._load_block(obj, oid, size // bs)
                if len(old) > keep:
                    self._store_block(oid, size // bs, old[:keep])
        obj.size = size

    def zero(self, obj: ObjectHeader, offset: int, length: int) -> None:
        """Zero the bytes in range that lie inside the object; the size does not change."""
        end = min(offset + length, obj.size)
        if offset >= end:
            return
        oid = self._materialize(obj)
        bs = self._bs
        first, last = offset // bs, (end - 1) // bs
        # Blocks wholly inside the range are dropped (sparse); at most the two edge
        # blocks are rewritten with their covered part zeroed.
        whole_first = first if offset == first * bs else first + 1
        whole_last = last if end >= min(last * bs + bs, obj.size) else last - 1
        if whole_first <= whole_last:
            base = oid << BLOCK_INDEX_BITS
            self._db.execute(_BLOCK_DROP_RANGE, (base | whole_first, base | whole_last))
        for index in sorted({first, last}):
            if whole_first <= index <= whole_last:
                continue
            old = self._load_block(obj, oid, index)
            start = index * bs
            lo, hi = max(offset, start) - start, min(end - start, len(old))
            if hi > lo:
                block = bytearray(old)
                block[lo:hi] = bytes(hi - lo)
                self._store_block(oid, index, block)
