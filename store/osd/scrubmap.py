"""Reading a PG's scrub map from the object store, a page at a time (store.osd.scrub says
what a scrub map is and how copies are judged).

Scrub reads run in a worker thread, so that re-reading a PG's data never holds the event
loop, on a SQLite connection of their own, opened at the first page: one read transaction
per page. The data file's slots a page reads stay allocated while it runs
(``ObjectStore.pinned_slots``, held by the caller).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence

from store.errors import ChecksumError
from store.osd.blockspace import BlockSpace
from store.osd.objectdata import ObjectHeader, ObjectRows
from store.osd.pglog import PgLogs
from store.osd.scrub import DEEP_PAGE_BYTES, PAGE_OBJECTS, ScrubEntry, ScrubPage

_SCRUB_LISTING = (
    "SELECT oid, pg, size, epoch, seq, mtime, name FROM objects INDEXED BY {index}"
    " WHERE pool = ? AND pg = ? AND live = {live} AND name > ? AND (? IS NULL OR name <= ?)"
    " ORDER BY name LIMIT ?"
)
_SCRUB_LIVE = _SCRUB_LISTING.format(index="objects_listing", live=1)
# A PG's tombstones are few (those its log still covers): found by PG, then sorted.
_SCRUB_TOMBSTONES = _SCRUB_LISTING.format(index="objects_tombstones", live=0)
MAX_SCRUB_ERROR = 200


class ScrubMaps:
    """The store's scrub reader: one connection, one page at a time."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        space: BlockSpace,
        on_checksum_error: Callable[[], None],
    ) -> None:
        self._connect = connect  # a read-only connection to the store's database
        self._space = space
        self._on_checksum_error = on_checksum_error
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def page(
        self,
        pool: int,
        pg: int,
        *,
        deep: bool,
        after: str | None = None,
        upto: str | None = None,
        limit: int = PAGE_OBJECTS,
        names: Sequence[str] | None = None,
        byte_budget: int = DEEP_PAGE_BYTES,
    ) -> ScrubPage:
        """A page of the PG's scrub map: its objects and tombstones named after ``after``
        and up to ``upto`` (both optional), at most ``limit``, in name order — or exactly
        ``names`` (those we hold in this PG). A deep page re-reads data and stops once it
        has read ``byte_budget`` bytes (after one object at least); ``next`` says where the
        following page starts. One read transaction for the page.

        Runs in a worker thread, under ``pinned_slots`` (see ``store.osd.scrub``).
        """
        with self._lock:
            db = self._db
            if db is None:
                db = self._db = self._connect()
            rows = ObjectRows(db, self._space, self._on_checksum_error)
            db.execute("BEGIN")
            try:
                head = PgLogs(db).info(pool, pg).last_version
                more = False
                if names is not None:
                    headers = [
                        obj
                        for name in names
                        if (obj := rows.load(pool, name)).oid is not None and obj.pg == pg
                    ]
                else:
                    headers, more = _listing(db, pool, pg, after, upto, limit)
                entries: list[tuple[str, ScrubEntry]] = []
                spent = 0
                next_name: str | None = None
                for obj in headers:
                    if names is None and deep and entries and spent >= byte_budget:
                        next_name = entries[-1][0]
                        break
                    entry, cost = _entry(rows, obj, deep)
                    entries.append((obj.name, entry))
                    spent += cost
                else:
                    if more:
                        next_name = entries[-1][0]
            finally:
                db.execute("COMMIT")
        return ScrubPage(entries, next_name, head)


def _listing(
    db: sqlite3.Connection, pool: int, pg: int, after: str | None, upto: str | None, limit: int
) -> tuple[list[ObjectHeader], bool]:
    """Headers of live objects and tombstones in (after, upto], in name order; whether more
    than ``limit`` are there."""
    found: list[ObjectHeader] = []
    for query, live in ((_SCRUB_LIVE, True), (_SCRUB_TOMBSTONES, False)):
        rows = db.execute(query, (pool, pg, after or "", upto, upto, limit + 1)).fetchall()
        found.extend(
            ObjectHeader(pool, name, oid, row_pg, live, size, (epoch, seq), mtime)
            for oid, row_pg, size, epoch, seq, mtime, name in rows
        )
    found.sort(key=lambda obj: obj.name)
    return found[:limit], len(found) > limit


def _entry(rows: ObjectRows, obj: ObjectHeader, deep: bool) -> tuple[ScrubEntry, int]:
    """The object's scrub entry, and how many bytes reading it took."""
    if not obj.live:
        return ScrubEntry(False, obj.version), 0
    attrs = rows.xattrs_digest(obj)
    if not deep:
        return ScrubEntry(True, obj.version, obj.size, attrs), 0
    omap, omap_bytes = rows.omap_digest(obj)
    data: int | None = None
    error: str | None = None
    try:
        data = rows.data_digest(obj)
    except ChecksumError as exc:
        error = str(exc)[:MAX_SCRUB_ERROR]
    except OSError as exc:
        error = f"cannot read the data file: {exc}"[:MAX_SCRUB_ERROR]
    return ScrubEntry(True, obj.version, obj.size, attrs, omap, data, error), obj.size + omap_bytes
