"""Each placement group's position in its history and its log of recent operations.

A PG's row in ``pgs`` holds ``last_version`` (the version of the last operation
applied; its seq counts the PG's operations) and ``log_tail``: the log holds exactly
the entries with ``log_tail < seq <= last seq``, one per seq, so whether it can
bring a peer up from some seq is a single comparison. Trimming moves the tail and
takes with it the tombstones of deletes it passes.

Like :mod:`store.osd.objectdata`, nothing here commits: the caller owns the
transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from store.osd.ops import InvalidRequest, parse_version_untrusted, validate_object_name

PG_SCHEMA = """
CREATE TABLE pgs (
    pool INTEGER NOT NULL, pg INTEGER NOT NULL,
    epoch INTEGER NOT NULL, seq INTEGER NOT NULL, log_tail INTEGER NOT NULL,
    PRIMARY KEY (pool, pg)
) WITHOUT ROWID;
CREATE TABLE pglog (
    pool INTEGER NOT NULL, pg INTEGER NOT NULL, seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL, reqid TEXT,
    PRIMARY KEY (pool, pg, seq)
) WITHOUT ROWID;
CREATE INDEX pglog_reqids ON pglog (pool, pg, reqid) WHERE reqid IS NOT NULL;
"""

_PG_GET = "SELECT epoch, seq, log_tail FROM pgs WHERE pool = ? AND pg = ?"
_PG_ADVANCE = (
    "INSERT INTO pgs (pool, pg, epoch, seq, log_tail) VALUES (?, ?, ?, ?, 0)"
    " ON CONFLICT (pool, pg) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq"
)
_PG_TOUCH = "INSERT OR IGNORE INTO pgs (pool, pg, epoch, seq, log_tail) VALUES (?, ?, 0, 0, 0)"
_PG_RESET = "INSERT OR REPLACE INTO pgs (pool, pg, epoch, seq, log_tail) VALUES (?, ?, ?, ?, ?)"
_PG_SET_TAIL = "UPDATE pgs SET log_tail = ? WHERE pool = ? AND pg = ?"
_PG_DROP = "DELETE FROM pgs WHERE pool = ? AND pg = ?"
_PG_ALL = "SELECT pool, pg FROM pgs ORDER BY pool, pg"
_LOG_APPEND = "INSERT INTO pglog (pool, pg, seq, epoch, name, kind, reqid) VALUES (?,?,?,?,?,?,?)"
_LOG_BY_REQID = "SELECT epoch, seq FROM pglog WHERE pool = ? AND pg = ? AND reqid = ?"
_LOG_SINCE = (
    "SELECT epoch, seq, name, kind, reqid FROM pglog"
    " WHERE pool = ? AND pg = ? AND seq > ? ORDER BY seq"
)
_LOG_LAST = (
    "SELECT epoch, seq, name, kind, reqid FROM pglog"
    " WHERE pool = ? AND pg = ? ORDER BY seq DESC LIMIT ?"
)
_LOG_TRIM = "DELETE FROM pglog WHERE pool = ? AND pg = ? AND seq <= ?"
_LOG_DROP = "DELETE FROM pglog WHERE pool = ? AND pg = ?"
_TOMBSTONES_PURGE = "DELETE FROM objects WHERE pool = ? AND pg = ? AND live = 0 AND seq <= ?"


@dataclass(frozen=True)
class LogEntry:
    version: tuple[int, int]
    name: str
    kind: str  # "modify" | "delete"
    reqid: str | None

    def to_wire(self) -> list[object]:
        return [self.version[0], self.version[1], self.name, self.kind, self.reqid]


MAX_REQID_BYTES = 256


def entries_from_wire(raw: object) -> list[LogEntry]:
    """A peer's log entries, checked: increasing seqs, sane types. Raises InvalidRequest."""
    if not isinstance(raw, list | tuple):
        raise InvalidRequest("log entries must be a list")
    entries: list[LogEntry] = []
    for item in raw:
        if not isinstance(item, list | tuple) or len(item) != 5:
            raise InvalidRequest("a log entry is [epoch, seq, name, kind, reqid]")
        epoch, seq, name, kind, reqid = item
        version = parse_version_untrusted([epoch, seq])
        if kind not in ("modify", "delete"):
            raise InvalidRequest(f"log entry kind must be modify or delete, not {kind!r}")
        if reqid is not None and (type(reqid) is not str or len(reqid) > MAX_REQID_BYTES):
            raise InvalidRequest("log entry reqid must be a short string or nil")
        if entries and version[1] != entries[-1].version[1] + 1:
            raise InvalidRequest("log entries must have consecutive seqs")
        entries.append(LogEntry(version, validate_object_name(name), kind, reqid))
    return entries


@dataclass(frozen=True)
class PgInfo:
    last_version: tuple[int, int]
    log_tail: int  # log entries with seq > log_tail are present


class PgLogs:
    """The PG rows and logs, through one SQLite connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def info(self, pool: int, pg: int) -> PgInfo:
        row = self._db.execute(_PG_GET, (pool, pg)).fetchone()
        return PgInfo((0, 0), 0) if row is None else PgInfo((row[0], row[1]), row[2])

    def all(self) -> list[tuple[int, int]]:
        return [(pool, pg) for pool, pg in self._db.execute(_PG_ALL).fetchall()]

    def find(self, pool: int, pg: int, reqid: str) -> tuple[int, int] | None:
        """The version a request was logged with, if its entry is still in the log."""
        row = self._db.execute(_LOG_BY_REQID, (pool, pg, reqid)).fetchone()
        return None if row is None else (row[0], row[1])

    def at(self, pool: int, pg: int, seq: int) -> tuple[tuple[int, int], str | None] | None:
        """(version, reqid) of the entry with this seq, if the log still has it."""
        row = self._db.execute(
            "SELECT epoch, seq, reqid FROM pglog WHERE pool = ? AND pg = ? AND seq = ?",
            (pool, pg, seq),
        ).fetchone()
        return None if row is None else ((row[0], row[1]), row[2])

    def since(self, pool: int, pg: int, seq: int) -> list[LogEntry] | None:
        """Entries after ``seq``, or None if some of them are no longer in the log."""
        if seq < self.info(pool, pg).log_tail:
            return None
        rows = self._db.execute(_LOG_SINCE, (pool, pg, seq)).fetchall()
        return [LogEntry((e, s), name, kind, reqid) for e, s, name, kind, reqid in rows]

    def last(self, pool: int, pg: int, limit: int) -> list[LogEntry]:
        """The newest ``limit`` entries, oldest first."""
        rows = self._db.execute(_LOG_LAST, (pool, pg, limit)).fetchall()
        return [LogEntry((e, s), name, kind, reqid) for e, s, name, kind, reqid in reversed(rows)]

    def append(self, pool: int, pg: int, entry: LogEntry) -> None:
        """Log the PG's next operation; the caller made ``entry.version`` seq last + 1."""
        epoch, seq = entry.version
        self._db.execute(_LOG_APPEND, (pool, pg, seq, epoch, entry.name, entry.kind, entry.reqid))
        self._db.execute(_PG_ADVANCE, (pool, pg, epoch, seq))

    def touch(self, pool: int, pg: int) -> None:
        """Make sure the PG has a row, so that ``all`` lists it."""
        self._db.execute(_PG_TOUCH, (pool, pg))

    def reset(
        self, pool: int, pg: int, last_version: tuple[int, int], entries: Sequence[LogEntry] = ()
    ) -> None:
        """The PG's history now ends at ``last_version``, and its log is ``entries``.

        ``entries`` (consecutive, from a peer whose state we copied) keep the request ids
        of operations we did not apply ourselves, so a retransmission of one of them is
        still recognised. Entries that do not end exactly at ``last_version`` are not a
        log of it and are ignored: the log is then empty.
        """
        epoch, seq = last_version
        kept = [e for e in entries if e.version[1] <= seq]
        if not kept or kept[-1].version != last_version:
            kept = []
        self._db.execute(_LOG_DROP, (pool, pg))
        tail = kept[0].version[1] - 1 if kept else seq
        self._db.execute(_PG_RESET, (pool, pg, epoch, seq, tail))
        self._db.executemany(
            _LOG_APPEND,
            ((pool, pg, e.version[1], e.version[0], e.name, e.kind, e.reqid) for e in kept),
        )

    def drop(self, pool: int, pg: int) -> None:
        self._db.execute(_LOG_DROP, (pool, pg))
        self._db.execute(_PG_DROP, (pool, pg))

    def trim(self, pool: int, pg: int, max_entries: int) -> None:
        """Keep the last ``max_entries`` entries; purge tombstones the tail passes."""
        info = self.info(pool, pg)
        tail = info.last_version[1] - max_entries
        if tail <= info.log_tail:
            return
        self._db.execute(_LOG_TRIM, (pool, pg, tail))
        self._db.execute(_TOMBSTONES_PURGE, (pool, pg, tail))
        self._db.execute(_PG_SET_TAIL, (tail, pool, pg))
