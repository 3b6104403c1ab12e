"""An object's data: fixed-size blocks in slots of the data file, each with its checksum.

Theory of operation
-------------------
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

The object's header (:class:`store.osd.objectdata.ObjectHeader`) comes from the caller,
with its row already made when anything is written; its size is kept up to date here.
Nothing here commits: the caller owns the transaction (and its savepoints).
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from store.errors import ChecksumError, Code
from store.osd.blockmap import CHUNK_BLOCKS, LAST_CHUNK, BlockMaps
from store.osd.blockspace import BlockSpace
from store.osd.blocksums import block_checksum, block_checksums
from store.osd.ops import MAX_OBJECT_SIZE
from store.osd.txns import OpFailed

if TYPE_CHECKING:
    from store.osd.objectdata import ObjectHeader

# (first block index, the content of one or more whole blocks, their checksums if known)
_Blocks = tuple[int, bytes | bytearray | memoryview, "array[int] | None"]


def _oid(obj: ObjectHeader) -> int:
    assert obj.oid is not None, "the object's row is made before its data is written"
    return obj.oid


_IS_SLOT = (0).__le__  # slot numbers are >= 0; -1 is a hole


class ObjectBlocks:
    """Reads and writes objects' data through one SQLite connection and the data file."""

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
            old.extend(filter(_IS_SLOT, maps.slots_of(first, first + count - 1)))  # not holes
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

    def drop(self, oid: int, first: int, last: int) -> None:
        """Turn blocks ``first..last`` into holes."""
        if first > last:
            return
        maps = self._maps(oid, first, last)
        self._space.free_later(maps.drop(first, last))
        maps.save()

    def read(self, obj: ObjectHeader, offset: int, length: int) -> bytes:
        """The bytes of the range that lie in the object, verified."""
        data = self.read_range(obj, offset, length, borrow=False)
        assert isinstance(data, bytes)
        return data

    def read_range(
        self, obj: ObjectHeader, offset: int, length: int, *, borrow: bool
    ) -> bytes | memoryview:
        """``read``; with ``borrow``, a range stored in one run may be a view of the
        thread's read buffer (``BlockSpace.borrow_run``), valid until its next read."""
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
        oid = _oid(obj)
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
        oid = _oid(obj)
        self.drop(oid, 0, LAST_CHUNK)
        obj.size = 0
        self.write(obj, 0, data, sums)

    def truncate(self, obj: ObjectHeader, size: int) -> None:
        if size > MAX_OBJECT_SIZE:
            raise OpFailed(Code.EFBIG, f"{size} B is more than {MAX_OBJECT_SIZE} B")
        if size < obj.size:
            oid = _oid(obj)
            bs = self._bs
            self.drop(oid, -(-size // bs), LAST_CHUNK)
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
        oid = _oid(obj)
        bs = self._bs
        first, last = offset // bs, (end - 1) // bs
        # Blocks wholly inside the range (or whose rest lies past the end) become holes;
        # at most the two edge blocks are rewritten with their covered part zeroed.
        whole_first = first if offset == first * bs else first + 1
        whole_last = last if end >= min(last * bs + bs, obj.size) else last - 1
        self.drop(oid, whole_first, whole_last)
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
