"""Helpers shared by the object store tests."""

from __future__ import annotations

import itertools
import sqlite3

from store.errors import Code
from store.osd.objectdata import BLOCK_INDEX_BITS
from store.osd.objectstore import (
    ObjectStore,
    PrimaryTxn,
    ReplicaTxn,
    TxnResult,
)
from store.osd.ops import (
    MAX_OBJECT_SIZE,
    Cond,
    Op,
    Read,
)

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
    store: ObjectStore, name: str, version: tuple[int, int], *ops: Op, pg: int = 0
) -> TxnResult:
    [result] = store.apply_batch([ReplicaTxn(POOL, pg, name, list(ops), version, "r")])
    return result


def ok(result: TxnResult) -> TxnResult:
    assert result.code == Code.OK, result
    return result


def read_all(store: ObjectStore, name: str) -> bytes:
    result = ok(store.execute_read(POOL, name, [Read(0, MAX_OBJECT_SIZE)]))
    data = result.results[0]
    assert isinstance(data, bytes)
    return data


def stored_blocks(store: ObjectStore, name: str) -> list[tuple[int, int]]:
    """(index, stored length) of each block the object has a row for."""
    with sqlite3.connect(store.path) as db:
        (oid,) = db.execute("SELECT oid FROM objects WHERE name = ?", (name,)).fetchone()
        base = oid << BLOCK_INDEX_BITS
        rows = db.execute(
            "SELECT id, length(data) FROM blocks WHERE id BETWEEN ? AND ? ORDER BY id",
            (base, base + (1 << BLOCK_INDEX_BITS) - 1),
        )
        return [(block_id - base, length) for block_id, length in rows]


def block_rows(store: ObjectStore, name: str) -> list[int]:
    return [index for index, _ in stored_blocks(store, name)]
