"""One object's rows in the daemon's SQLite database, and the operations that act on them.

Theory of operation
-------------------
An object is a row of ``objects`` (its header: pool, name, PG, size, version, mtime,
and whether it is live or a tombstone) plus rows of ``blockmap``, ``xattrs`` and
``omap`` keyed by the header's integer id, the oid.

Data is cut into fixed-size blocks, and each block that holds data lives in a slot of
the data file (:mod:`store.osd.blockspace`). ``blockmap`` says where, with each block's
xxh3_64 checksum (:mod:`store.osd.blockmap`). A block without a slot reads as zeros: a
hole costs nothing, truncating up writes nothing, and a block that ends up all zeros
becomes a hole.

A slot always holds a whole block, and the checksum covers the whole block. Invariant:
the bytes of a block at or past the object's size are zeros. Writes only grow the
size, truncating down zeroes the tail of the block the new end falls in, zero never
moves it.

Blocks are written copy-on-write: new content goes to a new slot, and the old slot is
freed when the transaction commits, so a crash leaves every committed block intact.

A block's checksum is verified before any of its bytes are used, including the read
half of a read-modify-write, so a damaged block is never served and never gets a
fresh checksum that would make it look good. A write that carries the checksums of the
blocks it covers whole (:mod:`store.osd.blocksums`) has them stored as they are.

Nothing here commits: the caller owns the transaction (and its savepoints).
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import xxhash

from store.errors import ChecksumError, Code, StoreError
from store.osd.blockmap import CHUNK_BLOCKS, LAST_CHUNK, BlockMaps
from store.osd.blockspace import BlockSpace
from store.osd.blocksums import block_checksum, block_checksums
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


class OpFailed(StoreError):
    """An operation that cannot apply; the request fails with ``code`` and changes nothing."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


# (first block index, the content of one or more whole blocks, their checksums if known)
_Blocks = tuple[int, bytes | bytearray | memoryview, "array[int] | None"]


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
        self._space = space
        block_size = self._bs = space.block_size
        self._zeros = bytes(block_size)
        self._zero_sum = block_checksum(self._zeros)
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
        self._drop_blocks(oid, 0, LAST_CHUNK)
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
        (``BlockSpace.read_run``): only for a lone read whose result is used at once.
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
                return self._read(obj, offset, length, borrow=borrow)
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
                self.write(obj, offset, data, sums)
            case WriteFull(data, sums):
                self.write_full(obj, data, sums)
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
            hasher.update(self.read(obj, offset, window))
        return hasher.intdigest()

    # --- data ------------------------------------------------------------------------

    def _maps(self, oid: int, first: int, last: int) -> BlockMaps:
        return BlockMaps(self._db, oid, first // CHUNK_BLOCKS, last // CHUNK_BLOCKS)

    def _verified(self, obj: ObjectHeader, index: int, csum: int, data: bytes | memoryview) -> None:
        if len(data) != self._bs or block_checksum(data) != csum:
            self._on_checksum_error()
            raise ChecksumError(f"checksum mismatch in object {obj.name!r} block {index}")

    def _verified_run(
        self, obj: ObjectHeader, first: int, sums: list[int], data: bytes | memoryview
    ) -> None:
        """Check consecutive blocks from ``first`` against their checksums at once."""
        bs = self._bs
        if len(data) == len(sums) * bs:
            if len(sums) == 1:  # most small reads: no arrays to build for one block
                if block_checksum(data) == sums[0]:
                    return
            elif block_checksums(data, bs) == array("q", sums):
                return
        for k, csum in enumerate(sums):  # find the first bad block, and say which
            self._verified(obj, first + k, csum, data[k * bs : (k + 1) * bs])

    def _load_block(self, obj: ObjectHeader, maps: BlockMaps, index: int) -> bytes:
        """Block ``index`` as ``block_size`` bytes (zeros for a hole), verified."""
        found = maps.get(index)
        if found is None:
            return self._zeros
        slot, csum = found
        data = self._space.read_run(slot, 1)
        self._verified(obj, index, csum, data)
        return data

    def _put_blocks(self, maps: BlockMaps, blocks: Sequence[_Blocks]) -> None:
        """Give each block a fresh slot; all-zero content becomes a hole. Each item is
        (index, content, checksums) where content holds one block or several consecutive
        ones, and checksums are theirs or None (computed here)."""
        bs, zeros, zero_sum = self._bs, self._zeros, self._zero_sum
        runs: list[memoryview] = []  # spans of consecutive blocks to write
        starts: list[int] = []  # the index of each span's first block
        run_sums: list[array[int]] = []  # the checksums of each span's blocks
        holes: list[int] = []  # indexes of all-zero blocks
        old: list[int] = []  # slots the blocks had
        for first, content, known in blocks:
            view = memoryview(content).cast("B")
            count = len(view) // bs
            old.extend(slot for slot in maps.slots_of(first, first + count - 1) if slot >= 0)
            sums = known if known is not None else block_checksums(view[: count * bs], bs)
            if zero_sum not in sums:  # no block is all zeros: one run
                runs.append(view[: count * bs])
                starts.append(first)
                run_sums.append(sums)
                continue
            run_start = None
            for j in range(count):
                if sums[j] == zero_sum and view[j * bs : (j + 1) * bs].tobytes() == zeros:
                    holes.append(first + j)
                    if run_start is not None:
                        runs.append(view[run_start * bs : j * bs])
                        run_sums.append(sums[run_start:j])
                        run_start = None
                elif run_start is None:
                    run_start = j
                    starts.append(first + j)
            if run_start is not None:
                runs.append(view[run_start * bs : count * bs])
                run_sums.append(sums[run_start:count])
        self._space.free_later(old)
        slots = self._space.write_blocks(runs)
        for index in holes:
            maps.clear(index)
        at = 0
        for start, sums in zip(starts, run_sums, strict=True):
            maps.set_run(start, slots[at : at + len(sums)], sums)
            at += len(sums)
        maps.save()

    def _drop_blocks(self, oid: int, first: int, last: int) -> None:
        """Turn blocks ``first..last`` into holes."""
        if first > last:
            return
        maps = self._maps(oid, first, last)
        self._space.free_later(maps.drop(first, last))
        maps.save()

    def read(self, obj: ObjectHeader, offset: int, length: int) -> bytes:
        """The bytes of the range that lie in the object, verified."""
        data = self._read(obj, offset, length, borrow=False)
        assert isinstance(data, bytes)
        return data

    def _read(
        self, obj: ObjectHeader, offset: int, length: int, *, borrow: bool
    ) -> bytes | memoryview:
        """``read``; with ``borrow``, a range stored in one run may be a view of the
        thread's read buffer (``BlockSpace.borrow_run``)."""
        end = min(offset + length, obj.size)
        if offset >= end or obj.oid is None:
            return b""
        bs = self._bs
        first, last = offset // bs, (end - 1) // bs
        maps = self._maps(obj.oid, first, last)
        span = maps.span(first, last)
        if span is not None and span[0] == list(range(span[0][0], span[0][0] + len(span[0]))):
            # Every block present, in consecutive slots (a large write lands so): one
            # pread, checked in bulk, and what was read is the answer or a slice of it.
            slots, sums = span
            run = self._space.borrow_run if borrow else self._space.read_run
            whole = run(slots[0], len(slots))
            self._verified_run(obj, first, sums, whole)
            lo, hi = offset - first * bs, end - first * bs
            return whole if lo == 0 and hi == len(whole) else whole[lo:hi]
        # Holes, or blocks in several places: each run of consecutive blocks in
        # consecutive slots is one pread, into a buffer of zeros.
        present = maps.present(first, last)
        out = bytearray(end - offset)
        i = 0
        while i < len(present):
            j = i + 1
            while (
                j < len(present)
                and present[j][0] == present[j - 1][0] + 1
                and present[j][1] == present[j - 1][1] + 1
            ):
                j += 1
            whole = self._space.read_run(present[i][1], j - i)
            self._verified_run(obj, present[i][0], [csum for _, _, csum in present[i:j]], whole)
            run_start = present[i][0] * bs
            lo, hi = max(offset, run_start), min(end, run_start + (j - i) * bs)
            with memoryview(whole) as data:
                out[lo - offset : hi - offset] = data[lo - run_start : hi - run_start]
            i = j
        return bytes(out)

    def write(
        self,
        obj: ObjectHeader,
        offset: int,
        data: bytes | memoryview,
        sums: array[int] | None = None,
    ) -> None:
        """Write ``data`` at ``offset``; ``sums``, when given, are the checksums of the
        blocks it covers whole."""
        end = offset + len(data)
        if end > MAX_OBJECT_SIZE:
            raise OpFailed(Code.EFBIG, f"write would grow {obj.name!r} past {MAX_OBJECT_SIZE} B")
        if not data:
            return
        oid = self._materialize(obj)
        bs = self._bs
        first, last = offset // bs, (end - 1) // bs
        maps = self._maps(oid, first, last)
        view = memoryview(data)
        blocks: list[_Blocks] = []
        # The blocks the write covers whole go as one run, straight from the data.
        whole_first, whole_last = -(-offset // bs), end // bs - 1
        for index in sorted({first, last}):
            if whole_first <= index <= whole_last:
                continue
            start = index * bs
            lo, hi = max(offset, start), min(end, start + bs)
            # Bytes of the block outside the write keep their old content, and those
            # past the object's end are zeros already (the invariant).
            block = bytearray(self._load_block(obj, maps, index))
            block[lo - start : hi - start] = view[lo - offset : hi - offset]
            blocks.append((index, block, None))
        if whole_first <= whole_last:
            middle = view[whole_first * bs - offset : (whole_last + 1) * bs - offset]
            if sums is not None and len(sums) != whole_last - whole_first + 1:
                raise ValueError(f"{len(sums)} checksums for {whole_last - whole_first + 1} blocks")
            blocks.append((whole_first, middle, sums))
        self._put_blocks(maps, sorted(blocks, key=lambda item: item[0]))
        obj.size = max(obj.size, end)

    def write_full(
        self, obj: ObjectHeader, data: bytes | memoryview, sums: array[int] | None = None
    ) -> None:
        if len(data) > MAX_OBJECT_SIZE:
            raise OpFailed(Code.EFBIG, f"{len(data)} B is more than {MAX_OBJECT_SIZE} B")
        oid = self._materialize(obj)
        self._drop_blocks(oid, 0, LAST_CHUNK)
        obj.size = 0
        self.write(obj, 0, data, sums)

    def truncate(self, obj: ObjectHeader, size: int) -> None:
        if size > MAX_OBJECT_SIZE:
            raise OpFailed(Code.EFBIG, f"{size} B is more than {MAX_OBJECT_SIZE} B")
        if size < obj.size:
            oid = self._materialize(obj)
            bs = self._bs
            self._drop_blocks(oid, -(-size // bs), LAST_CHUNK)
            keep = size % bs
            if keep:
                index = size // bs
                maps = self._maps(oid, index, index)
                block = bytearray(self._load_block(obj, maps, index))
                block[keep:] = bytes(bs - keep)
                self._put_blocks(maps, [(index, block, None)])
        obj.size = size

    def zero(self, obj: ObjectHeader, offset: int, length: int) -> None:
        """Zero the bytes in range that lie inside the object; the size does not change."""
        end = min(offset + length, obj.size)
        if offset >= end:
            return
        oid = self._materialize(obj)
        bs = self._bs
        first, last = offset // bs, (end - 1) // bs
        # Blocks wholly inside the range (or whose rest lies past the end) become holes;
        # at most the two edge blocks are rewritten with their covered part zeroed.
        whole_first = first if offset == first * bs else first + 1
        whole_last = last if end >= min(last * bs + bs, obj.size) else last - 1
        self._drop_blocks(oid, whole_first, whole_last)
        edges = [i for i in sorted({first, last}) if not whole_first <= i <= whole_last]
        if edges:
            maps = self._maps(oid, edges[0], edges[-1])
            blocks: list[_Blocks] = []
            for index in edges:
                start = index * bs
                block = bytearray(self._load_block(obj, maps, index))
                lo, hi = max(offset, start) - start, min(end, start + bs) - start
                block[lo:hi] = bytes(hi - lo)
                blocks.append((index, block, None))
            self._put_blocks(maps, blocks)


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
