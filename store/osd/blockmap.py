"""Where an object's blocks are: rows of the ``blockmap`` table, each covering
``CHUNK_BLOCKS`` blocks of one object with their slot in the data file and checksum.

The row ``oid << BLOCK_INDEX_BITS | c`` covers blocks ``64c .. 64c + 63`` of the object
with id ``oid``: an array of (slot, checksum) pairs as signed 64-bit little-endian
integers, slot -1 for a hole, trailing holes left out; a chunk of holes has no row. The
table's rowid b-tree keeps an object's rows together and in order, so a range of blocks is
a rowid range scan. (The table itself is created with the object tables, in
:mod:`store.osd.objectdata`.)
"""

from __future__ import annotations

import sqlite3
import sys
from array import array
from collections.abc import Iterator, Sequence

BLOCK_INDEX_BITS = 24
LAST_CHUNK = (1 << BLOCK_INDEX_BITS) - 1  # the chunk number no object reaches
CHUNK_BLOCKS = 64  # blocks per blockmap row
_BIG_ENDIAN = sys.byteorder == "big"

_HOLES = array("q", [-1, 0]) * CHUNK_BLOCKS  # a whole chunk of holes, to extend rows from
_MAP_RANGE = "SELECT id, map FROM blockmap WHERE id BETWEEN ? AND ? ORDER BY id"
_MAP_PUT = "INSERT OR REPLACE INTO blockmap (id, map) VALUES (?, ?)"
_MAP_DROP = "DELETE FROM blockmap WHERE id = ?"


def _decode(raw: bytes) -> array[int]:
    entries = array("q")
    entries.frombytes(raw)
    if _BIG_ENDIAN:
        entries.byteswap()
    return entries


def used_slots(db: sqlite3.Connection) -> Iterator[int]:
    """Every slot the block maps reference (to rebuild the free space at start)."""
    for (raw,) in db.execute("SELECT map FROM blockmap"):
        yield from (slot for slot in _decode(raw)[::2] if slot >= 0)


def _as_array(values: Sequence[int]) -> array[int]:
    return values if isinstance(values, array) and values.typecode == "q" else array("q", values)


class BlockMaps:
    """The slot and checksum of an object's blocks ``CHUNK_BLOCKS`` at a time.

    A ``blockmap`` row holds one chunk: an array of (slot, checksum) pairs as signed
    64-bit little-endian integers, slot -1 for a hole, trailing holes left out. A chunk
    of holes has no row. Rows are loaded for a span of chunks and written back by
    :meth:`save`.
    """

    def __init__(self, db: sqlite3.Connection, oid: int, first_chunk: int, last_chunk: int) -> None:
        self._db = db
        self._base = oid << BLOCK_INDEX_BITS
        last_chunk = min(last_chunk, LAST_CHUNK)
        span = (self._base | first_chunk, self._base | last_chunk)
        self._chunks: dict[int, array[int]] = {}
        for row_id, raw in db.execute(_MAP_RANGE, span).fetchall():
            self._chunks[row_id & LAST_CHUNK] = _decode(raw)
        self._dirty: set[int] = set()

    def get(self, index: int) -> tuple[int, int] | None:
        entries = self._chunks.get(index // CHUNK_BLOCKS)
        at = 2 * (index % CHUNK_BLOCKS)
        if entries is None or at >= len(entries) or entries[at] < 0:
            return None
        return entries[at], entries[at + 1]

    def set(self, index: int, slot: int, csum: int) -> None:
        chunk = index // CHUNK_BLOCKS
        entries = self._chunks.setdefault(chunk, array("q"))
        at = 2 * (index % CHUNK_BLOCKS)
        if at >= len(entries):
            entries.extend(_HOLES[: at + 2 - len(entries)])
        entries[at], entries[at + 1] = slot, csum
        self._dirty.add(chunk)

    def slots_of(self, first: int, last: int) -> list[int]:
        """The slot of each block ``first..last``, -1 for a hole (sliced in bulk)."""
        return self._column(first, last, 0, -1)

    def _column(self, first: int, last: int, column: int, missing: int) -> list[int]:
        """Slots (column 0) or checksums (1) of blocks ``first..last``, sliced from the
        rows in bulk; ``missing`` for a block past a row's end or in no row."""
        out: list[int] = []
        for chunk in range(first // CHUNK_BLOCKS, last // CHUNK_BLOCKS + 1):
            base = chunk * CHUNK_BLOCKS
            lo, hi = max(first - base, 0), min(last - base, CHUNK_BLOCKS - 1)
            entries = self._chunks.get(chunk)
            have = entries[2 * lo + column : 2 * hi + 2 : 2] if entries is not None else []
            out.extend(have)
            out.extend([missing] * (hi - lo + 1 - len(have)))
        return out

    def set_run(self, first: int, slots: Sequence[int], sums: Sequence[int]) -> None:
        """Blocks ``first``, ``first + 1``... get these slots and checksums, in bulk."""
        at, count = 0, len(slots)
        while at < count:
            chunk, within = divmod(first + at, CHUNK_BLOCKS)
            take = min(CHUNK_BLOCKS - within, count - at)
            entries = self._chunks.setdefault(chunk, array("q"))
            need = 2 * (within + take)
            if len(entries) < need:
                entries.extend(_HOLES[: need - len(entries)])  # copied as it is, not converted
            entries[2 * within : need : 2] = _as_array(slots[at : at + take])
            entries[2 * within + 1 : need : 2] = _as_array(sums[at : at + take])
            self._dirty.add(chunk)
            at += take

    def clear(self, index: int) -> None:
        chunk = index // CHUNK_BLOCKS
        entries = self._chunks.get(chunk)
        at = 2 * (index % CHUNK_BLOCKS)
        if entries is not None and at < len(entries) and entries[at] >= 0:
            entries[at], entries[at + 1] = -1, 0
            self._dirty.add(chunk)

    def present(self, first: int, last: int) -> list[tuple[int, int, int]]:
        """(index, slot, checksum) of the blocks in ``first..last`` that hold data."""
        found = []
        for chunk in sorted(self._chunks):
            entries = self._chunks[chunk]
            base = chunk * CHUNK_BLOCKS
            lo, hi = max(first - base, 0), min(last - base, len(entries) // 2 - 1)
            for j in range(lo, hi + 1):
                if entries[2 * j] >= 0:
                    found.append((base + j, entries[2 * j], entries[2 * j + 1]))
        return found

    def span(self, first: int, last: int) -> tuple[list[int], list[int]] | None:
        """The slots and checksums of blocks ``first..last`` when every one holds data
        (sliced from the rows in bulk); None when any is a hole."""
        slots = self._column(first, last, 0, -1)
        if min(slots) < 0:
            return None
        return slots, self._column(first, last, 1, 0)

    def drop(self, first: int, last: int) -> list[int]:
        """Make ``first..last`` holes; returns the slots they used."""
        slots = []
        for index, slot, _ in self.present(first, last):
            slots.append(slot)
            self.clear(index)
        return slots

    def save(self) -> None:
        for chunk in sorted(self._dirty):
            entries = self._chunks[chunk]
            while entries and entries[-2] < 0:
                del entries[-2:]
            row_id = self._base | chunk
            if not entries:
                self._db.execute(_MAP_DROP, (row_id,))
                continue
            if _BIG_ENDIAN:
                entries = array("q", entries)
                entries.byteswap()
            self._db.execute(_MAP_PUT, (row_id, entries.tobytes()))
        self._dirty.clear()
