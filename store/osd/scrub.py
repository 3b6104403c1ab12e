"""Scrub: compare the copies of a placement group's objects, judge them, and schedule scrubs.

Theory of operation
-------------------
A PG's primary scrubs it (``PgScrub.scrub`` in :mod:`store.osd.pgscrub` is the I/O shell;
this module holds the decisions). Each member reads a **scrub map** of the PG, a page of objects at a time in name
order: for every object (and every tombstone) its version, size and a digest of its
attributes; a deep scrub adds a digest of the omap and of the data, re-reading every block
and checking it against its stored checksum. A copy that cannot be read whole carries the
error instead of a data digest.

:func:`compare_object` judges one object from the copies of every member, by these rules:

- a copy with a read or checksum error is bad;
- the authoritative version is the newest any member holds; only an error-free copy of
  exactly that version can be authoritative (installing an older version over a newer one is
  never a repair), so if every copy of it is damaged the object has no good copy;
- among the error-free copies of that version, the content held by the most members wins;
  a tie goes to the copy earliest in the acting order (the primary's, when it is one of them);
- a member that lacks the object, or holds an older version of it, is inconsistent only if
  its PG history reaches the authoritative version (``heads``): a member still catching up
  is recovery's business, not scrub's;
- a tombstone counts as a copy: an object deleted at the newest version makes live copies of
  older versions stale.

Maps are read while writes go on, so two members' maps can differ merely because a write had
reached one and not yet the other. The shell therefore treats every difference as a
*candidate*: it lets in-flight writes land, reads the candidates again, drops those whose
primary copy changed in between, and judges the rest on the second reading. A repair
installs the authoritative copy only if it is still of the judged version, with a
transaction that refuses to put it over a newer one.

Errors found and not repaired stay known — the PG shows ``+inconsistent`` — until a later
scrub no longer finds them; a light scrub cannot clear what only a deep scrub sees.

The scheduler (:func:`run_scheduler`) scrubs at most one PG of its daemon at a time, the one
most overdue (:class:`ScrubSchedule`, pure and unit-tested). A PG never scrubbed since the
daemon started is first due at a random moment within one interval, so a restart spreads the
first scrubs instead of starting them all at once.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from store.errors import StoreError
from store.osd.ops import (
    MAX_OBJECT_SIZE,
    InvalidRequest,
    parse_version_untrusted,
    validate_object_name,
)

if TYPE_CHECKING:
    from store.osd.daemon import OsdDaemon
    from store.osd.objectstore import ObjectStore

log = logging.getLogger("store.osd")

Version = tuple[int, int]
PAGE_OBJECTS = 256  # objects per scrub map page
MAX_PAGE_OBJECTS = 1000  # the most a peer may ask for in one page
DEEP_PAGE_BYTES = 16 << 20  # a deep page stops after reading this much (at least one object)
MAX_ERROR_TEXT = 500
MAX_REPORTED_ERRORS = 1000  # errors listed in one scrub's report (all are counted)
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class ScrubEntry:
    """One member's copy of one object as a scrub reads it."""

    exists: bool  # False: a tombstone, the object was deleted at ``version``
    version: Version
    size: int = 0
    attrs: int = 0  # digest of the xattrs
    omap: int | None = None  # digest of the omap entries (deep scrub)
    data: int | None = None  # digest of the content, holes as zeros (deep scrub)
    error: str | None = None  # why the copy could not be read whole

    def to_wire(self, name: str) -> list[object]:
        return [
            name,
            self.exists,
            self.size,
            list(self.version),
            self.attrs,
            self.omap,
            self.data,
            self.error,
        ]


def _digest_untrusted(raw: object, what: str) -> int | None:
    if raw is None:
        return None
    if type(raw) is not int or not 0 <= raw <= _U64:
        raise InvalidRequest(f"scrub entry: {what} must be an unsigned 64-bit integer or nil")
    return raw


def entry_from_wire_untrusted(raw: object) -> tuple[str, ScrubEntry]:
    """A peer's scrub map row, checked; raises InvalidRequest on anything malformed."""
    if not isinstance(raw, list | tuple) or len(raw) != 8:
        raise InvalidRequest(
            "a scrub entry is [name, exists, size, version, attrs, omap, data, error]"
        )
    name, exists, size, version, attrs, omap, data, error = raw
    if type(exists) is not bool:
        raise InvalidRequest("scrub entry: exists must be a boolean")
    if type(size) is not int or not 0 <= size <= MAX_OBJECT_SIZE:
        raise InvalidRequest(f"scrub entry: size must be 0 to {MAX_OBJECT_SIZE}")
    if error is not None and (type(error) is not str or len(error) > MAX_ERROR_TEXT):
        raise InvalidRequest("scrub entry: error must be a short string or nil")
    attrs_digest = _digest_untrusted(attrs, "attrs")
    entry = ScrubEntry(
        exists=exists,
        version=parse_version_untrusted(version),
        size=size,
        attrs=0 if attrs_digest is None else attrs_digest,
        omap=_digest_untrusted(omap, "omap"),
        data=_digest_untrusted(data, "data"),
        error=error,
    )
    return validate_object_name(name), entry


@dataclass(frozen=True)
class ScrubPage:
    """A page of one member's scrub map: entries in name order, where the next page starts
    (None: this was the last), and the member's newest PG version when it was read."""

    entries: list[tuple[str, ScrubEntry]]
    next: str | None
    head: Version

    def to_wire(self) -> dict[str, object]:
        return {
            "objects": [entry.to_wire(name) for name, entry in self.entries],
            "next": self.next,
            "v": list(self.head),
        }

    @classmethod
    def from_wire_untrusted(cls, raw: object, limit: int = MAX_PAGE_OBJECTS) -> ScrubPage:
        if not isinstance(raw, dict) or not {"objects", "next", "v"} <= set(raw):
            raise InvalidRequest("a scrub page is a map of objects, next and v")
        objects, next_name = raw["objects"], raw["next"]
        if not isinstance(objects, list | tuple) or len(objects) > limit:
            raise InvalidRequest(f"a scrub page holds a list of at most {limit} entries")
        if next_name is not None:
            next_name = validate_object_name(next_name)
        entries = [entry_from_wire_untrusted(item) for item in objects]
        names = [name for name, _ in entries]
        if names != sorted(set(names)):
            raise InvalidRequest("scrub page entries must be in name order, each name once")
        return cls(entries, next_name, parse_version_untrusted(raw["v"]))


# --- judging copies -----------------------------------------------------------------


@dataclass(frozen=True)
class CopyProblem:
    osd: int
    problem: str
    deep_only: bool = False  # only a deep scrub can see it (data, omap, read errors)


@dataclass(frozen=True)
class Verdict:
    """What is wrong with one object's copies, and which copy is good."""

    name: str
    version: Version  # the authoritative version
    authoritative: int | None  # the member holding the good copy; None: no good copy
    bad: tuple[CopyProblem, ...]

    @property
    def repairable(self) -> bool:
        return self.authoritative is not None


def _signature(entry: ScrubEntry) -> tuple[object, ...]:
    if not entry.exists:
        return (False,)
    return (True, entry.size, entry.attrs, entry.omap, entry.data)


def _differences(entry: ScrubEntry, auth: ScrubEntry) -> list[tuple[str, bool]]:
    """How a copy of the authoritative version differs from the authoritative copy, each
    difference with whether only a deep scrub sees it."""
    if entry.exists != auth.exists:
        return [("exists, but the object was deleted" if entry.exists else "deleted here", False)]
    if not entry.exists:
        return []
    found = []
    if entry.size != auth.size:
        found.append((f"size {entry.size}, authoritative {auth.size}", False))
    if entry.attrs != auth.attrs:
        found.append(("attributes differ", False))
    if None not in (entry.omap, auth.omap) and entry.omap != auth.omap:
        found.append(("omap differs", True))
    if None not in (entry.data, auth.data) and entry.data != auth.data:
        found.append(("data differs", True))
    return found


def _fmt(version: Version) -> str:
    return f"{version[0]}'{version[1]}"


def compare_object(
    name: str,
    copies: Mapping[int, ScrubEntry | None],
    order: Sequence[int],
    heads: Mapping[int, Version],
) -> Verdict | None:
    """Judge one object's copies (None or absent: the member holds nothing of it).

    ``order`` is the scrubbed members in acting order, primary first; ``heads`` their newest
    PG versions. Returns None when every copy that should agree does.
    """
    present = {m: e for m in order if (e := copies.get(m)) is not None}
    if not present:
        return None
    newest = max(e.version for e in present.values())
    groups: dict[tuple[object, ...], list[int]] = {}
    for member in order:
        entry = present.get(member)
        if entry is not None and entry.error is None and entry.version == newest:
            groups.setdefault(_signature(entry), []).append(member)
    rank = {member: i for i, member in enumerate(order)}
    auth_member: int | None = None
    if groups:
        # The most members; among equals, the group whose first member comes first.
        best = max(groups.values(), key=lambda ms: (len(ms), -rank[ms[0]]))
        auth_member = best[0]
    auth = present[auth_member] if auth_member is not None else None
    bad: list[CopyProblem] = []
    for member in order:
        entry = present.get(member)
        behind = heads.get(member, (0, 0)) < newest
        if entry is not None and entry.error is not None:
            bad.append(CopyProblem(member, f"read error: {entry.error}", deep_only=True))
        elif entry is None or entry.version < newest:
            should_exist = auth.exists if auth is not None else True
            if behind:
                continue  # still catching up: recovery brings it the newest version
            if entry is None or not entry.exists:
                if should_exist:
                    bad.append(CopyProblem(member, f"missing (authoritative {_fmt(newest)})"))
            elif not should_exist:
                bad.append(
                    CopyProblem(
                        member,
                        f"stale version {_fmt(entry.version)}: deleted at {_fmt(newest)}",
                    )
                )
            else:
                bad.append(
                    CopyProblem(
                        member,
                        f"stale version {_fmt(entry.version)}, authoritative {_fmt(newest)}",
                    )
                )
        elif member != auth_member:
            # An error-free copy of the newest version joined a group: there is an auth.
            assert auth is not None
            found = _differences(entry, auth)
            if found:
                text = "; ".join(what for what, _ in found)
                bad.append(CopyProblem(member, text, all(deep for _, deep in found)))
    if not bad:
        return None
    return Verdict(name, newest, auth_member, tuple(bad))


def compare_maps(
    maps: Mapping[int, Mapping[str, ScrubEntry]],
    order: Sequence[int],
    heads: Mapping[int, Version],
    names: Iterable[str] | None = None,
) -> list[Verdict]:
    """Judge every object any member listed (or only ``names``), in name order."""
    if names is None:
        every: set[str] = set()
        for entries in maps.values():
            every.update(entries)
        names = every
    verdicts = []
    for name in sorted(names):
        copies = {member: maps.get(member, {}).get(name) for member in order}
        verdict = compare_object(name, copies, order, heads)
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


def changed_between(first: ScrubEntry | None, second: ScrubEntry | None) -> bool:
    """Whether the primary's copy changed between two readings (a write landed)."""
    if first is None or second is None:
        return (first is None) != (second is None)
    return first.version != second.version or first.exists != second.exists


def batches_by_size(
    names: Sequence[str], sizes: Mapping[str, int], budget: int, limit: int
) -> list[list[str]]:
    """``names`` cut into batches of at most ``limit`` names and about ``budget`` bytes (a
    batch holds at least one name, however big)."""
    batches: list[list[str]] = []
    current: list[str] = []
    spent = 0
    for name in names:
        size = sizes.get(name, 0)
        if current and (len(current) >= limit or spent + size > budget):
            batches.append(current)
            current, spent = [], 0
        current.append(name)
        spent += size
    if current:
        batches.append(current)
    return batches


# --- known errors ---------------------------------------------------------------------


@dataclass(frozen=True)
class ScrubError:
    name: str
    osd: int
    problem: str
    deep: bool  # found by a deep scrub only: a light scrub cannot clear it

    def to_report(self) -> dict[str, object]:
        return {"object": self.name, "osd": self.osd, "problem": self.problem}


@dataclass
class ScrubTally:
    """What one scrub of a PG found and did, page by page; ``report`` is its answer."""

    pg: str
    deep: bool
    skipped: list[int] = field(default_factory=list)  # acting members not scrubbed
    objects: int = 0
    found_count: int = 0
    found: list[ScrubError] = field(default_factory=list)  # the first MAX_REPORTED_ERRORS
    left: list[ScrubError] = field(default_factory=list)  # found and not repaired
    repaired: int = 0  # bad copies replaced by a good one
    changed: int = 0  # objects written while being scrubbed: judged next time

    def judged(self, verdict: Verdict, repaired: set[int]) -> None:
        for problem in verdict.bad:
            error = ScrubError(verdict.name, problem.osd, problem.problem, problem.deep_only)
            self.found_count += 1
            if len(self.found) < MAX_REPORTED_ERRORS:
                self.found.append(error)
            if problem.osd in repaired:
                self.repaired += 1
            else:
                self.left.append(error)

    def report(self) -> dict[str, Any]:
        return {
            "pg": self.pg,
            "deep": self.deep,
            "objects": self.objects,
            "errors": [e.to_report() for e in self.found],
            "errors_total": self.found_count,
            "repaired": self.repaired,
            "unrepaired": len(self.left),
            "changed": self.changed,
            "skipped_osds": self.skipped,
        }


def merge_known_errors(
    known: Iterable[ScrubError], found_left: Iterable[ScrubError], *, deep: bool
) -> list[ScrubError]:
    """The errors known after a scrub: a deep scrub's findings replace all; a light scrub's
    replace those a light scrub can see, and the deep-only ones stay until a deep scrub."""
    kept = [] if deep else [e for e in known if e.deep]
    seen = {(e.name, e.osd) for e in found_left}
    return [*found_left, *(e for e in kept if (e.name, e.osd) not in seen)]


# --- the schedule ---------------------------------------------------------------------

PgKey = tuple[int, int]


@dataclass(frozen=True)
class ScrubStamps:
    """When a PG was last scrubbed (unix time; 0: never, as far as we know)."""

    last_scrub: float
    last_deep_scrub: float


@dataclass
class ScrubSchedule:
    """Which PG to scrub next: at most one at a time, the most overdue, deep first."""

    rng: random.Random = field(default_factory=random.Random)
    _first_seen: dict[tuple[PgKey, bool], float] = field(default_factory=dict)
    _not_before: dict[PgKey, float] = field(default_factory=dict)

    def _reference(self, key: PgKey, deep: bool, last: float, now: float, interval: float) -> float:
        if last > 0:
            return last
        seen = self._first_seen.get((key, deep))
        if seen is None:
            # As if last scrubbed a random part of an interval ago: due within one interval.
            seen = self._first_seen[(key, deep)] = now - self.rng.uniform(0.0, interval)
        return seen

    def due(
        self, key: PgKey, stamps: ScrubStamps, now: float, interval: float, deep_interval: float
    ) -> tuple[float, bool] | None:
        """(how many intervals overdue, deep) if the PG is due, else None."""
        if self._not_before.get(key, 0.0) > now:
            return None
        if deep_interval > 0:
            ref = self._reference(key, True, stamps.last_deep_scrub, now, deep_interval)
            if now >= ref + deep_interval:
                return (now - ref) / deep_interval, True
        if interval > 0:
            last = max(stamps.last_scrub, stamps.last_deep_scrub)
            ref = self._reference(key, False, last, now, interval)
            if now >= ref + interval:
                return (now - ref) / interval, False
        return None

    def pick(
        self,
        candidates: Mapping[PgKey, ScrubStamps],
        now: float,
        interval: float,
        deep_interval: float,
    ) -> tuple[PgKey, bool] | None:
        """The PG to scrub now and whether deeply, or None. Forgets PGs no longer offered."""
        for stale in [k for k in self._first_seen if k[0] not in candidates]:
            del self._first_seen[stale]
        best: tuple[bool, float, PgKey] | None = None
        for key in sorted(candidates):
            found = self.due(key, candidates[key], now, interval, deep_interval)
            if found is None:
                continue
            overdue, deep = found
            if best is None or (deep, overdue) > (best[0], best[1]):
                best = (deep, overdue, key)
        return None if best is None else (best[2], best[0])

    def postpone(self, key: PgKey, until: float) -> None:
        """A scrub that could not run: not before ``until``."""
        self._not_before[key] = until


def scheduler_tick(interval: float, deep_interval: float) -> float:
    """Seconds between looks at the schedule: a few, shorter for very short intervals."""
    positive = [i for i in (interval, deep_interval) if i > 0]
    if not positive:
        return 5.0
    return min(5.0, max(0.2, min(positive) / 4))


RETRY_AFTER = 60.0  # seconds before a PG whose scheduled scrub failed is tried again


def retry_delay(interval: float, deep_interval: float) -> float:
    """Seconds before a scheduled scrub that could not run is tried again: a minute, or
    the shortest interval when that is shorter (but not under a second)."""
    positive = [i for i in (interval, deep_interval) if i > 0]
    return min(RETRY_AFTER, max(1.0, min(positive, default=RETRY_AFTER)))


async def run_scheduler(daemon: OsdDaemon) -> None:
    """Scrub the PGs this daemon is active primary for when they are due, one at a time."""
    schedule = ScrubSchedule()
    while True:
        config = daemon.config
        interval, deep_interval = config.scrub_interval, config.deep_scrub_interval
        await trio.sleep(scheduler_tick(interval, deep_interval))
        if interval <= 0 and deep_interval <= 0:
            continue
        candidates = {
            key: pgobj.scrubber.scrub_stamps()
            for key, pgobj in daemon.pgs.items()
            if pgobj.scrubber.may_scrub()
        }
        now = time.time()
        choice = schedule.pick(candidates, now, interval, deep_interval)
        if choice is None:
            continue
        key, deep = choice
        pgobj = daemon.pgs.get(key)
        if pgobj is None:
            continue
        try:
            await pgobj.scrubber.scrub(deep=deep, repair=False, scheduled=True)
        except (StoreError, OSError) as exc:
            log.info("scheduled scrub of pg %s did not run: %s", pgobj.name, exc)
            schedule.postpone(key, time.time() + retry_delay(interval, deep_interval))
            continue
        except Exception:
            log.exception("scheduled scrub of pg %s failed", pgobj.name)
            schedule.postpone(key, time.time() + RETRY_AFTER)
            continue


# --- reading maps off the event loop ---------------------------------------------------

_limiters: weakref.WeakKeyDictionary[ObjectStore, trio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


async def read_scrub_page(
    store: ObjectStore,
    pool: int,
    pg: int,
    *,
    deep: bool,
    after: str | None = None,
    upto: str | None = None,
    limit: int = PAGE_OBJECTS,
    names: Sequence[str] | None = None,
) -> ScrubPage:
    """A page of this daemon's scrub map, read in a worker thread.

    The reads run off the event loop, one page at a time, on the store's own scrub
    connection (a read transaction per page): a deep page re-reads up to
    ``DEEP_PAGE_BYTES`` of data and hashes it, which would otherwise stall every client
    request for as long. While the thread runs, the store holds back the reuse of freed
    data slots (``ObjectStore.pinned_slots``), so a slot the page's snapshot still maps
    cannot be rewritten under it. One page at a time per store keeps scrubs from several
    primaries from taking more than a thread of the disk.
    """
    limiter = _limiters.get(store)
    if limiter is None:
        limiter = _limiters[store] = trio.CapacityLimiter(1)
    read = functools.partial(
        store.scrub_page,
        pool,
        pg,
        deep=deep,
        after=after,
        upto=upto,
        limit=limit,
        names=names,
        byte_budget=DEEP_PAGE_BYTES,
    )
    async with limiter:
        with store.pinned_slots():
            return await trio.to_thread.run_sync(read)


def parse_scrub_map_args_untrusted(args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a peer's ``scrub_map`` request, checked."""
    deep = args.get("deep", False)
    if type(deep) is not bool:
        raise InvalidRequest("scrub_map: deep must be a boolean")
    names = args.get("names")
    if names is not None:
        if not isinstance(names, list | tuple) or len(names) > MAX_PAGE_OBJECTS:
            raise InvalidRequest(f"scrub_map: names must be a list of at most {MAX_PAGE_OBJECTS}")
        names = [validate_object_name(n) for n in names]
    bounds = {}
    for key in ("after", "upto"):
        value = args.get(key)
        bounds[key] = None if value is None else validate_object_name(value)
    limit = args.get("limit", PAGE_OBJECTS)
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE_OBJECTS:
        raise InvalidRequest(f"scrub_map: limit must be 1 to {MAX_PAGE_OBJECTS}")
    return {"deep": deep, "names": names, "limit": limit, **bounds}
