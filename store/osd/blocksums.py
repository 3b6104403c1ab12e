"""Block checksums: computed once per write, carried with it to the replicas.

Every block a daemon stores has an xxh3 checksum beside its slot (``store.osd.objectblocks``),
checked on every read. A large write covers most of its blocks whole, and their checksums
depend on nothing but the data and the block size; the primary computes them once, the
write operation carries them (``Write.sums``), and its forward to the replicas carries
them too, so that a replica does not hash again the bytes it received whole over an
authenticated TLS link. A replica uses them only for its own block size, and checks that
there is exactly one per whole block; they are never trusted for partly written blocks,
whose checksum depends on what the block held before.

Whatever computed them, they are the checksums of the bytes that went to disk: a read
that finds otherwise fails with EIO, as for any damaged block.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from dataclasses import replace

import xxhash

from store.osd.ops import InvalidRequest, Op, Write, WriteFull

SUMS_MIN_BLOCKS = 16  # smaller writes are summed where they land: not worth the bytes


def block_checksum(data: bytes | bytearray | memoryview) -> int:
    """xxh3_64 of a block, as the signed 64-bit integer SQLite stores."""
    digest = xxhash.xxh3_64_intdigest(data)
    return digest - (1 << 64) if digest >> 63 else digest


def block_checksums(data: bytes | bytearray | memoryview, block_size: int) -> array[int]:
    """``block_checksum`` of each whole block of ``data``, computed in bulk."""
    digest = xxhash.xxh3_64_intdigest
    with memoryview(data) as view:
        digests = array(
            "Q", [digest(view[at : at + block_size]) for at in range(0, len(view), block_size)]
        )
    sums = array("q")
    sums.frombytes(digests.tobytes())  # the same bits, as SQLite's signed integers
    return sums


def whole_blocks(offset: int, length: int, block_size: int) -> tuple[int, int]:
    """The first block a write of ``length`` bytes at ``offset`` covers whole, and how
    many it covers whole."""
    first = -(-offset // block_size)
    return first, max(0, (offset + length) // block_size - first)


def _written(op: Op) -> tuple[Write | WriteFull, int, bytes | memoryview] | None:
    """A data-writing operation with its offset and data; None for any other."""
    if isinstance(op, Write):
        return op, op.offset, op.data
    if isinstance(op, WriteFull):
        return op, 0, op.data
    return None


def with_sums(ops: list[Op], block_size: int) -> list[Op]:
    """``ops`` with the checksums of their whole blocks on each large write."""
    out = ops
    for i, op in enumerate(ops):
        written = _written(op)
        if written is None:
            continue
        write, offset, data = written
        first, count = whole_blocks(offset, len(data), block_size)
        if count < SUMS_MIN_BLOCKS:
            continue
        start = first * block_size - offset
        with memoryview(data) as view:
            sums = block_checksums(view[start : start + count * block_size], block_size)
        if out is ops:
            out = list(ops)
        out[i] = replace(write, sums=sums)
    return out


def sums_to_wire(ops: Sequence[Op], block_size: int) -> list[list[object]]:
    """``[op index, block size, checksums]`` of each write that carries them, the
    checksums as little-endian signed 64-bit integers."""
    out: list[list[object]] = []
    for i, op in enumerate(ops):
        sums = op.sums if isinstance(op, Write | WriteFull) else None
        if sums is not None:
            if sys.byteorder == "big":
                sums = array("q", sums)
                sums.byteswap()
            out.append([i, block_size, sums.tobytes()])
    return out


def attach_sums_untrusted(ops: list[Op], raw: object, block_size: int) -> list[Op]:
    """``ops`` with the checksums a forward carried (``sums_to_wire``) on their writes.
    Checksums for another block size than ours are ignored; anything malformed is refused."""
    if raw is None:
        return ops
    if not isinstance(raw, list):
        raise InvalidRequest("sums must be an array")
    out = list(ops)
    for item in raw:
        if (
            not isinstance(item, list)
            or len(item) != 3
            or type(item[0]) is not int
            or type(item[1]) is not int
            or not isinstance(item[2], bytes)
        ):
            raise InvalidRequest("each sums entry must be [op index, block size, bytes]")
        index, size, packed = item
        if not 0 <= index < len(out):
            raise InvalidRequest(f"sums for operation {index} of {len(out)}")
        written = _written(out[index])
        if written is None:
            raise InvalidRequest(f"sums for operation {index}, which writes no data")
        if size != block_size:
            continue  # blocks of another size: this daemon sums its own
        write, offset, data = written
        _, count = whole_blocks(offset, len(data), block_size)
        if len(packed) != 8 * count or count == 0:
            raise InvalidRequest(f"operation {index} covers {count} blocks whole, not that many")
        sums = array("q")
        sums.frombytes(packed)
        if sys.byteorder == "big":
            sums.byteswap()
        out[index] = replace(write, sums=sums)
    return out
