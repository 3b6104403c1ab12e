"""Splitting a pool's placement groups on one daemon when its pg_num grows.

With ``stable_mod`` and pg_num a power of two, growing pg_num from ``old`` to ``new`` sends
each object either to its PG ``p`` or to a child ``p + k*old`` — never elsewhere. The split
is local and needs nobody: recompute the PG of every object of the pool, and give each child
the history of its parent up to now (its newest version; an empty log, so peers that are
behind the split catch up by listing instead of by log). Whatever the new placement then
puts on other daemons, peering and recovery move there.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from store.placement import object_hash, pg_mask, stable_mod


@dataclass
class PgSplitTxn:
    pool: int
    seed: int
    old_pg_num: int
    new_pg_num: int


def split_pool(db: sqlite3.Connection, txn: PgSplitTxn) -> int:
    """Apply a split inside the caller's transaction; returns how many objects moved PG."""
    mask = pg_mask(txn.new_pg_num)
    moves = []
    for oid, name, pg in db.execute(
        "SELECT oid, name, pg FROM objects WHERE pool = ?", (txn.pool,)
    ):
        new_pg = stable_mod(object_hash(name, txn.seed), txn.new_pg_num, mask)
        if new_pg != pg:
            moves.append((new_pg, oid))
    db.executemany("UPDATE objects SET pg = ? WHERE oid = ?", moves)
    parents = db.execute(
        "SELECT pg, epoch, seq FROM pgs WHERE pool = ? AND pg < ?", (txn.pool, txn.old_pg_num)
    ).fetchall()
    for parent, epoch, seq in parents:
        for child in range(parent + txn.old_pg_num, txn.new_pg_num, txn.old_pg_num):
            db.execute(
                "INSERT OR IGNORE INTO pgs (pool, pg, epoch, seq, log_tail) VALUES (?, ?, ?, ?, ?)",
                (txn.pool, child, epoch, seq, seq),
            )
    db.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        (f"pg_num.{txn.pool}", txn.new_pg_num),
    )
    return len(moves)
