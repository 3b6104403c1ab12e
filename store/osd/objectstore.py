"""The storage daemon's object store: every object, version and PG log entry of one disk.

Theory of operation
-------------------
Object data lives in slots of one data file, ``DIR/blocks.dat``, written copy-on-write
(:mod:`store.osd.blockspace`); everything else — object headers, the map of blocks to
slots with their checksums, attributes, omap, PG logs — lives in one SQLite database,
``DIR/store.db``, in WAL mode with ``synchronous=FULL``. A change to an object's data,
attributes, omap and version and the PG log entry that records it commit in the same
transaction; the data file is fsynced before that commit, and the commit is on disk
(the WAL fsynced) before ``apply_batch`` returns. So an acknowledged write survives
``kill -9`` and power loss, and a crash never leaves half of one.

Two connections: the daemon's single writer thread calls ``apply_batch`` (one
transaction and one fsync for a whole batch, a savepoint per transaction so a
failing one rolls back alone); the event loop reads through the other, which in WAL
mode sees the last commit and never waits for the writer. Scrub reads get a third,
used from a worker thread (``scrub_page``, :mod:`store.osd.scrubmap`), so that re-reading
a PG's data never holds the event loop.

Versions are ``(epoch, seq)``. The primary of a PG gives each mutating request the
next seq of the PG and the current epoch; replicas take the version they are given
and must receive them in seq order, so ``last_version`` of a PG names exactly which
prefix of its history a daemon holds. The log keeps the most recent
``max_log_entries`` entries (seq > ``log_tail``) for peering and for recognising
retransmitted requests by ``reqid``. A deleted object leaves a tombstone (its header
with the delete's version) so that an older write or recovered state cannot bring it
back; tombstones go when the log is trimmed past them, because past that point
peering falls back to a full scan anyway.

How one object is laid out in rows is in :mod:`store.osd.objectdata`.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

from store.errors import ChecksumError, Code, ConfigError
from store.osd.blockmap import used_slots
from store.osd.blockspace import BlockSpace
from store.osd.objectdata import (
    MAX_BLOCK_SIZE,
    MIN_BLOCK_SIZE,
    OBJECT_SCHEMA,
    ObjectHeader,
    ObjectRows,
)
from store.osd.ops import (
    Op,
    Staged,
    is_mutating,
    leaves_absent,
)
from store.osd.pglog import PG_SCHEMA, LogEntry, PgInfo, PgLogs
from store.osd.pgsplit import PgSplitTxn, split_pool
from store.osd.scrubmap import ScrubMaps
from store.osd.txns import (
    ObjectMeta,
    ObjectState,
    ObjectStateTxn,
    OpFailed,
    PgRemoveTxn,
    PgResetLogTxn,
    PgScrubStampTxn,
    PrimaryTxn,
    ReplicaTxn,
    Txn,
    TxnResult,
)

SCHEMA_VERSION = 2
# Measured: with 8 KiB pages a 4 KiB block and its row header
# fit, but two do not, so half of every page is wasted; with 4 KiB pages a block
# spills into one overflow page and its row header shares a leaf with others, using
# about 1.13x the data. Throughput is about the same, so the smaller page wins.
PAGE_SIZE = 4096
# Reads through a memory map skip a copy per page; about twice the 60 KiB reads/s.
READER_MMAP_BYTES = 1 << 31

_META_SCHEMA = "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
_LISTING = (
    "SELECT name, size, epoch, seq FROM objects"
    " WHERE pool = ? AND pg = ? AND live = 1 AND name > ? ORDER BY name LIMIT ?"
)
_PG_MEMBERS = (
    "SELECT name FROM objects WHERE pool = ? AND pg = ? AND live = 1"
    " UNION ALL SELECT name FROM objects WHERE pool = ? AND pg = ? AND live = 0"
)
_USAGE = "SELECT count(*), total(size) FROM objects WHERE live = 1"
_META_SET = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"
_PG_COUNTS = "SELECT pool, pg, count(*) FROM objects WHERE live = 1 GROUP BY pool, pg"
_PG_COUNT = "SELECT count(*) FROM objects WHERE pool = ? AND pg = ? AND live = 1"


def _scrub_key(pool: int, pg: int) -> str:
    return f"scrub.{pool}.{pg}"


class _Rollback(Exception):
    """Undo the current transaction's savepoint and answer with ``result``."""

    def __init__(self, result: TxnResult) -> None:
        self.result = result


def _failure(exc: OpFailed | ChecksumError, version: tuple[int, int]) -> TxnResult:
    if isinstance(exc, OpFailed):
        return TxnResult(exc.code, [], version, exc.message)
    return TxnResult(Code.EIO, [], version, str(exc), damaged=True)


def _log_kind(ops: Sequence[Op]) -> str:
    return "delete" if leaves_absent(ops) else "modify"


class ObjectStore:
    def __init__(self, path: str, *, block_size: int = 4096, max_log_entries: int = 3000) -> None:
        """Create or open ``path/store.db``. An existing store keeps its own block size."""
        if block_size & (block_size - 1) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise ConfigError(
                f"block size must be a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
            )
        if max_log_entries < 1:
            raise ConfigError("max_log_entries must be at least 1")
        os.makedirs(path, exist_ok=True)
        self.path = os.path.join(path, "store.db")
        self.max_log_entries = max_log_entries
        self.checksum_errors = 0
        self._counter_lock = threading.Lock()
        self._writer = self._connect()
        self.block_size = self._open_schema(block_size)
        self._reader = self._connect_reader()
        self.space = BlockSpace(
            os.path.join(path, "blocks.dat"), self.block_size, used_slots(self._reader)
        )
        self._write_rows = ObjectRows(self._writer, self.space, self._count_checksum_error)
        self._read_rows = ObjectRows(self._reader, self.space, self._count_checksum_error)
        self._write_logs = PgLogs(self._writer)
        self._read_logs = PgLogs(self._reader)
        # Scrub reads run in a worker thread on a connection of their own (see scrub_page).
        self._scrub_maps = ScrubMaps(self._connect_reader, self.space, self._count_checksum_error)
        # A page of a PG's scrub map (ScrubMaps.page), in a worker thread.
        self.scrub_page = self._scrub_maps.page
        self._pins = 0
        self._release_deferred = False

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and ended here, explicitly.
        db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=256
        )
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA cache_size = -65536")
        return db

    def _connect_reader(self) -> sqlite3.Connection:
        db = self._connect()
        db.execute("PRAGMA query_only = ON")
        db.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
        return db

    def _open_schema(self, block_size: int) -> int:
        db = self._writer
        db.execute("BEGIN IMMEDIATE")
        try:
            exists = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            if not exists:
                for statement in (_META_SCHEMA + PG_SCHEMA + OBJECT_SCHEMA).split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("schema", SCHEMA_VERSION), ("block_size", block_size)],
                )
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if meta.get("schema") != SCHEMA_VERSION:
            raise ConfigError(
                f"{self.path} has schema {meta.get('schema')!r}; this daemon reads "
                f"{SCHEMA_VERSION}. Use a daemon of the matching version."
            )
        return int(meta["block_size"])

    def _count_checksum_error(self) -> None:
        with self._counter_lock:
            self.checksum_errors += 1

    def close(self) -> None:
        self._scrub_maps.close()
        self._reader.close()
        self._writer.close()
        self.space.close()

    # --- writer side -----------------------------------------------------------------

    def apply_batch(
        self, txns: Sequence[Txn], executed: Callable[[list[TxnResult]], None] | None = None
    ) -> list[TxnResult]:
        """Apply ``txns`` in order and commit them together. Call from one thread only.

        ``executed``, if given, is called with the results once every transaction has run,
        before the data file's flush and the commit: what each result will be if the
        commit succeeds (if it fails, the results returned are errors instead)."""
        db = self._writer
        results: list[TxnResult] = []
        touched: set[tuple[int, int]] = set()
        try:
            db.execute("BEGIN IMMEDIATE")
            for txn in txns:
                db.execute("SAVEPOINT txn")
                try:
                    results.append(self._apply(txn))
                except _Rollback as rollback:
                    db.execute("ROLLBACK TO txn")
                    self.space.txn_done(committed=False)
                    results.append(rollback.result)
                else:
                    self.space.txn_done(committed=True)
                db.execute("RELEASE txn")
                if not isinstance(txn, PgSplitTxn):
                    touched.add((txn.pool, txn.pg))
            for pool, pg in sorted(touched):
                self._write_logs.trim(pool, pg, self.max_log_entries)
            if executed is not None:
                executed(list(results))
            self.space.sync_data()
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._abandon_batch()
            if isinstance(exc, OSError):
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else:
                full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            code, what = (Code.ENOSPC, "disk full") if full else (Code.EIO, "storage error")
            message = f"{what}, batch not applied: {exc}"
            return [TxnResult(code, [], (0, 0), message) for _ in txns]
        except BaseException:
            self._abandon_batch()
            raise
        self.space.batch_done(committed=True)
        return results

    def _abandon_batch(self) -> None:
        db = self._writer
        with suppress(sqlite3.Error):
            if db.in_transaction:
                db.execute("ROLLBACK")
        self.space.batch_done(committed=False)

    def release_freed(self) -> None:
        """Let the writer reuse slots that finished batches freed; call between reads.

        While a read runs off the event loop (``pinned_slots``) the slots are held back
        until it ends."""
        if self._pins:
            self._release_deferred = True
            return
        self.space.release()

    @contextmanager
    def pinned_slots(self) -> Iterator[None]:
        """Hold back the reuse of freed slots while a read runs in another thread.

        Enter and leave on the thread that calls ``release_freed`` (the event loop). A
        worker-thread read looks up mappings and reads slots at its own pace; a slot freed
        by a commit after its snapshot began must not be rewritten until it is done."""
        self._pins += 1
        try:
            yield
        finally:
            self._pins -= 1
            if not self._pins and self._release_deferred:
                self._release_deferred = False
                self.space.release()

    def _apply(self, txn: Txn) -> TxnResult:
        match txn:
            case PrimaryTxn():
                return self._apply_primary(txn)
            case ReplicaTxn():
                return self._apply_replica(txn)
            case ObjectStateTxn():
                return self._install_state(txn)
            case PgResetLogTxn():
                return self._reset_log(txn)
            case PgRemoveTxn():
                return self._remove_pg(txn)
            case PgSplitTxn():
                return TxnResult(Code.OK, [split_pool(self._writer, txn)], (0, 0))
            case PgScrubStampTxn():
                stamps = f"{txn.last_scrub!r} {txn.last_deep_scrub!r}"
                self._writer.execute(_META_SET, (_scrub_key(txn.pool, txn.pg), stamps))
                return TxnResult(Code.OK, [], (0, 0))
        raise TypeError(f"not a transaction: {txn!r}")

    def _commit_object(
        self, obj: ObjectHeader, pg: int, version: tuple[int, int], kind: str, reqid: str | None
    ) -> None:
        obj.pg, obj.version, obj.mtime = pg, version, time.time()
        self._write_rows.save(obj)
        self._write_logs.append(obj.pool, pg, LogEntry(version, obj.name, kind, reqid))

    def _apply_primary(self, txn: PrimaryTxn) -> TxnResult:
        logged = self._write_logs.find(txn.pool, txn.pg, txn.reqid)
        if logged is not None:
            # A retransmission that reached a new primary: it is already in our history.
            return TxnResult(Code.OK, [None] * len(txn.ops), logged, "already applied")
        if any(isinstance(op, Staged) for op in txn.ops):
            # The front found no stage for it, and it is not a repeat of a logged write.
            message = "nothing is staged under this token: stage the data again"
            return TxnResult(Code.ENOTSTAGED, [], (0, 0), message)
        obj = self._write_rows.load(txn.pool, txn.name)
        before = obj.visible_version()
        if txn.cond is not None and not txn.cond.holds(obj.live, before):
            message = f"condition on {txn.name!r} does not hold"
            raise _Rollback(TxnResult(Code.ECANCELED, [], before, message))
        try:
            results = self._write_rows.run(obj, txn.ops, replica=False)
        except (OpFailed, ChecksumError) as exc:
            raise _Rollback(_failure(exc, before)) from None
        if not is_mutating(txn.ops):
            return TxnResult(Code.OK, results, before)
        last_epoch, last_seq = self._write_logs.info(txn.pool, txn.pg).last_version
        # The epoch never goes back, even from a primary whose map lags the last
        # writer's, so versions increase as tuples and not only by seq.
        version = (max(txn.epoch, last_epoch), last_seq + 1)
        self._commit_object(obj, txn.pg, version, _log_kind(txn.ops), txn.reqid)
        return TxnResult(Code.OK, results, version)

    def _apply_replica(self, txn: ReplicaTxn) -> TxnResult:
        last = self._write_logs.info(txn.pool, txn.pg).last_version
        seq = txn.version[1]
        if seq <= last[1]:
            logged = self._write_logs.at(txn.pool, txn.pg, seq)
            if logged is not None and logged != (txn.version, txn.reqid):
                # Our history has another write at this seq (written by an earlier
                # primary): acknowledging would claim a copy we do not have.
                return TxnResult(Code.EAGAIN, [], last, "divergent history: needs recovery")
            return TxnResult(Code.OK, [None] * len(txn.ops), txn.version, "already applied")
        if seq > last[1] + 1:
            return TxnResult(Code.EAGAIN, [], last, "log gap: needs recovery")
        obj = self._write_rows.load(txn.pool, txn.name)
        kind = _log_kind(txn.ops)
        if obj.version >= txn.version:
            # Recovery already installed this object as of a later version; the entry
            # still goes in the log so that our history has no hole.
            entry = LogEntry(txn.version, txn.name, kind, txn.reqid)
            self._write_logs.append(txn.pool, txn.pg, entry)
            return TxnResult(Code.OK, [None] * len(txn.ops), txn.version, "newer state kept")
        try:
            results = self._write_rows.run(obj, txn.ops, replica=True)
        except (OpFailed, ChecksumError) as exc:
            raise _Rollback(_failure(exc, obj.version)) from None
        self._commit_object(obj, txn.pg, txn.version, kind, txn.reqid)
        return TxnResult(Code.OK, results, txn.version)

    def _install_state(self, txn: ObjectStateTxn) -> TxnResult:
        state, rows = txn.state, self._write_rows
        obj = rows.load(txn.pool, state.name)
        newer = state.version > obj.version or (state.version == obj.version and txn.replace_equal)
        # One version is one write: an equal version is the same content.
        if not (newer or (txn.authoritative and state.version != obj.version)):
            return TxnResult(Code.OK, [False], obj.version, "ours is as new or newer")
        rows.install(
            obj, exists=state.exists, data=state.data, xattrs=state.xattrs, omap=state.omap
        )
        obj.pg, obj.version, obj.mtime = txn.pg, state.version, state.mtime
        rows.save(obj)
        self._write_logs.touch(txn.pool, txn.pg)
        return TxnResult(Code.OK, [True], state.version)

    def _reset_log(self, txn: PgResetLogTxn) -> TxnResult:
        self._write_logs.reset(txn.pool, txn.pg, txn.last_version, txn.entries)
        return TxnResult(Code.OK, [], txn.last_version)

    def _remove_pg(self, txn: PgRemoveTxn) -> TxnResult:
        key = (txn.pool, txn.pg)
        names = [name for (name,) in self._writer.execute(_PG_MEMBERS, key + key).fetchall()]
        for name in names:
            self._write_rows.forget(self._write_rows.load(txn.pool, name))
        self._write_logs.drop(txn.pool, txn.pg)
        self._writer.execute("DELETE FROM meta WHERE key = ?", (_scrub_key(txn.pool, txn.pg),))
        return TxnResult(Code.OK, [len(names)], (0, 0))

    # --- reader side -----------------------------------------------------------------

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement in it sees the same commit."""
        self._reader.execute("BEGIN")
        try:
            yield self._reader
        finally:
            self._reader.execute("COMMIT")

    def execute_read(
        self, pool: int, name: str, ops: Sequence[Op], *, borrow: bool = False
    ) -> TxnResult:
        """Run read-only ``ops``. With ``borrow``, the data of a lone ``Read`` may be a view
        of this thread's read buffer, valid until its next read: for a caller that sends
        it before reading again (the daemon's reply), never one that keeps it."""
        if is_mutating(ops):
            return TxnResult(Code.EINVAL, [], (0, 0), "execute_read takes read-only operations")
        borrow = borrow and len(ops) == 1
        try:
            with self._snapshot():
                obj = self._read_rows.load(pool, name)
                try:
                    results = self._read_rows.run(obj, ops, replica=False, borrow=borrow)
                except (OpFailed, ChecksumError) as exc:
                    return _failure(exc, obj.visible_version())
        except sqlite3.Error as exc:
            return TxnResult(Code.EIO, [], (0, 0), f"storage error: {exc}")
        return TxnResult(Code.OK, results, obj.visible_version())

    def stat(self, pool: int, name: str) -> ObjectMeta | None:
        obj = self._read_rows.load(pool, name)
        return ObjectMeta(obj.size, obj.version, obj.mtime) if obj.live else None

    def object_state(self, pool: int, name: str) -> ObjectState:
        """The whole object for a peer; raises ChecksumError if any block is damaged."""
        rows = self._read_rows
        with self._snapshot():
            obj = rows.load(pool, name)
            if not obj.live:
                return ObjectState(name, False, obj.version, 0, obj.mtime)
            return ObjectState(
                name,
                True,
                obj.version,
                obj.size,
                obj.mtime,
                rows.xattrs(obj),
                rows.omap(obj),
                rows.blocks.read(obj, 0, obj.size),
            )

    def list_pg(
        self, pool: int, pg: int, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, int, tuple[int, int]]], str | None]:
        """Live objects of a PG as (name, size, version), in name order after ``cursor``."""
        if limit < 1:
            raise ValueError(f"list_pg needs a limit of at least 1, not {limit}")
        rows = self._reader.execute(_LISTING, (pool, pg, cursor or "", limit + 1)).fetchall()
        page = [(name, size, (epoch, seq)) for name, size, epoch, seq in rows[:limit]]
        return page, (page[-1][0] if len(rows) > limit and page else None)

    def pg_info(self, pool: int, pg: int) -> PgInfo:
        return self._read_logs.info(pool, pg)

    def pg_log_since(self, pool: int, pg: int, seq: int) -> list[LogEntry] | None:
        """Entries after ``seq``, or None if they are no longer all in our log."""
        with self._snapshot():
            return self._read_logs.since(pool, pg, seq)

    def pg_log_last(self, pool: int, pg: int, limit: int) -> list[LogEntry]:
        """The newest ``limit`` entries of the PG's log, oldest first."""
        return self._read_logs.last(pool, pg, limit)

    def pg_scrub_stamps(self, pool: int, pg: int) -> tuple[float, float]:
        """(last scrub, last deep scrub) of the PG as last recorded here; zeros if never."""
        row = self._reader.execute(
            "SELECT value FROM meta WHERE key = ?", (_scrub_key(pool, pg),)
        ).fetchone()
        if row is None:
            return 0.0, 0.0
        try:
            last, deep = (float(x) for x in str(row[0]).split())
        except ValueError:  # not two numbers: as if never
            return 0.0, 0.0
        return last, deep

    def pool_pg_num(self, pool: int) -> int | None:
        """The pg_num this store last split the pool to (None: never seen the pool)."""
        with self._snapshot() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (f"pg_num.{pool}",)).fetchone()
        return int(row[0]) if row else None

    def pgs(self) -> list[tuple[int, int]]:
        """Every PG we hold anything of: objects, tombstones or log."""
        return self._read_logs.all()

    def pg_object_counts(self) -> dict[tuple[int, int], int]:
        """Live objects of every PG we hold objects of."""
        return {(pool, pg): n for pool, pg, n in self._reader.execute(_PG_COUNTS)}

    def pg_object_count(self, pool: int, pg: int) -> int:
        """Live objects of one PG."""
        return int(self._reader.execute(_PG_COUNT, (pool, pg)).fetchone()[0])

    def usage(self) -> dict[str, int]:
        objects, size = self._reader.execute(_USAGE).fetchone()
        db_bytes = 0
        for suffix in ("", "-wal"):
            with suppress(FileNotFoundError):
                db_bytes += os.path.getsize(self.path + suffix)
        return {"objects": objects, "bytes": int(size), "db_bytes": db_bytes, **self.space.stats()}
