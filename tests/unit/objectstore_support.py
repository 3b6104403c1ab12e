"""Helpers shared by the object store tests."""

from __future__ import annotations

import itertools
import sqlite3
from array import array

from store.errors import Code
from store.osd.blockmap import BLOCK_INDEX_BITS, CHUNK_BLOCKS
from store.osd.objectstore import ObjectStore
from store.osd.ops import (
    MAX_OBJECT_SIZE,
    Cond,
    Op,
    Read,
)
from store.osd.txns import PrimaryTxn, ReplicaTxn, TxnResult

POOL = 1
BS = 4096
_reqids = itertools.count()


def primary(
    store: ObjectStore,
    name: str,
    *ops: Op,
    cond: Cond | None = None,
    pg: int = 0,
    epoch: int = 1,
    reqid: str | None = None,
) -> TxnResult:
    reqid = reqid if reqid is not None else f"client.1:{next(_reqids)}"
    [result] = store.apply_batch([PrimaryTxn(POOL, pg, name, list(ops), cond, epoch, reqid)])
    return result


def replica(
    store: ObjectStore,
    name: str,
    version: tuple[int, int],
    *ops: Op,
    pg: int = 0,
    reqid: str = "r",
) -> TxnResult:
    [result] = store.apply_batch([ReplicaTxn(POOL, pg, name, list(ops), version, reqid)])
    return result


def ok(result: TxnResult) -> TxnResult:
    assert result.code == Code.OK, result
    return result


def read_all(store: ObjectStore, name: str) -> bytes:
    result = ok(store.execute_read(POOL, name, [Read(0, MAX_OBJECT_SIZE)]))
    data = result.results[0]
    assert isinstance(data, bytes)
    return data


def stored_blocks(store: ObjectStore, name: str) -> list[tuple[int, bytes]]:
    """(index, content read straight from the data file) of each block that has a slot."""
    with sqlite3.connect(store.path) as db:
        (oid,) = db.execute("SELECT oid FROM objects WHERE name = ?", (name,)).fetchone()
        base = oid << BLOCK_INDEX_BITS
        rows = db.execute(
            "SELECT id, map FROM blockmap WHERE id BETWEEN ? AND ? ORDER BY id",
            (base, base + (1 << BLOCK_INDEX_BITS) - 1),
        ).fetchall()
    found = []
    for row_id, raw in rows:
        entries = array("q")
        entries.frombytes(raw)
        for j in range(len(entries) // 2):
            slot = entries[2 * j]
            if slot >= 0:
                index = (row_id - base) * CHUNK_BLOCKS + j
                found.append((index, store.space.read_run(slot, 1)))
    return found


def block_rows(store: ObjectStore, name: str) -> list[int]:
    return [index for index, _ in stored_blocks(store, name)]


def block_slot(store: ObjectStore, name: str, index: int = 0) -> int:
    """The data file slot of block `index` of `name`, read from its block map."""
    with sqlite3.connect(store.path) as db:
        (oid,) = db.execute("SELECT oid FROM objects WHERE name = ?", (name,)).fetchone()
        row_id = oid << BLOCK_INDEX_BITS | index // CHUNK_BLOCKS
        (raw,) = db.execute("SELECT map FROM blockmap WHERE id = ?", (row_id,)).fetchone()
    entries = array("q")
    entries.frombytes(raw)
    return int(entries[2 * (index % CHUNK_BLOCKS)])


def corrupt_block(store: ObjectStore, name: str, index: int) -> None:
    """Flip a bit of the block in the data file, behind the store's back."""
    slot = block_slot(store, name, index)
    with open(store.space.path, "r+b") as f:
        f.seek(slot * store.block_size)
        first = f.read(1)
        f.seek(slot * store.block_size)
        f.write(bytes([first[0] ^ 1]))
