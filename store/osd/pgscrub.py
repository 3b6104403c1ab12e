"""Scrub, repair and read repair of one placement group, run by its primary.

The primary compares the PG's copies page by page across itself and its active members
(the rules, free of I/O, are in :mod:`store.osd.scrub`), judges again whatever differs once
the writes then in flight have landed, and replaces bad copies from the authoritative one —
pushing it to a member, or installing it here — with a transaction that never puts a
version over a newer one. A client read that meets a damaged block here is served after the
same kind of repair, from a member holding the same version (*read repair*).

``PgScrub`` keeps what scrubs found (errors not repaired make the PG ``+inconsistent``) and
when they ran; the :class:`~store.osd.pg.PlacementGroup` it belongs to owns it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from store.errors import Code, RemoteError, StoreError
from store.metrics.osd import PEER_TRAFFIC
from store.osd.scrub import (
    DEEP_PAGE_BYTES,
    PAGE_OBJECTS,
    ScrubEntry,
    ScrubError,
    ScrubPage,
    ScrubStamps,
    ScrubTally,
    Verdict,
    batches_by_size,
    changed_between,
    compare_maps,
    merge_known_errors,
    read_scrub_page,
)
from store.osd.txns import ObjectState, ObjectStateTxn, PgScrubStampTxn

if TYPE_CHECKING:
    from store.osd.pg import PlacementGroup

log = logging.getLogger("store.osd")

Version = tuple[int, int]
SCRUB_CALL_TIMEOUT = 120.0  # seconds for one page of a peer's scrub map
SCRUB_PAGE_PAUSE = 0.01  # seconds between pages: client I/O comes first


class PgScrub:
    def __init__(self, group: PlacementGroup) -> None:
        self.group = group
        # Unix time of the last scrub finished (deep ones count too), as recorded here: the
        # schedule goes on across restarts, and a new primary adopts its members' stamps.
        stamps = group.host.store.pg_scrub_stamps(group.pool_id, group.pg)
        self.last_scrub, self.last_deep_scrub = stamps
        self.scrub_objects = 0
        self.scrub_errors_found = 0
        self.known_errors: list[ScrubError] = []  # found and not repaired: +inconsistent
        self.scrubbing: str | None = None  # "light" or "deep" while a scrub runs
        self.read_repairs = 0
        self._scrub_lock = trio.Lock()
        self._read_repairs: dict[str, trio.Event] = {}

    def state_suffix(self) -> str:
        """What the PG's state says of scrubs: running now, errors left."""
        suffix = ""
        if self.scrubbing is not None:
            suffix += "+scrubbing+deep" if self.scrubbing == "deep" else "+scrubbing"
        if self.known_errors:
            suffix += "+inconsistent"
        return suffix

    def may_scrub(self) -> bool:
        """Whether a scheduled scrub may start: active, nothing to recover, none running."""
        return (
            self.group.state == "active"
            and not self.group.recovery.recovering
            and self.scrubbing is None
        )

    def scrub_stamps(self) -> ScrubStamps:
        return ScrubStamps(self.last_scrub, self.last_deep_scrub)

    def adopt_stamps(self, last_scrub: float, last_deep_scrub: float) -> None:
        """A member's stamps, heard in peering: the PG was scrubbed then, by whichever
        daemon was its primary. Newer ones than ours are kept and recorded."""
        now = time.time()
        last_scrub, last_deep_scrub = min(last_scrub, now), min(last_deep_scrub, now)
        if last_scrub > self.last_scrub or last_deep_scrub > self.last_deep_scrub:
            self.last_scrub = max(self.last_scrub, last_scrub)
            self.last_deep_scrub = max(self.last_deep_scrub, last_deep_scrub)
            self.group.host.writes.submit(self._stamp_txn())

    def _stamp_txn(self) -> PgScrubStampTxn:
        g = self.group
        return PgScrubStampTxn(g.pool_id, g.pg, self.last_scrub, self.last_deep_scrub)

    async def _record_stamps(self) -> None:
        result = await self.group.host.writes.submit(self._stamp_txn()).wait()
        if result.code != Code.OK:
            log.warning("pg %s: could not record its scrub time: %s", self.group.name, result)

    def scrub_info(self) -> dict[str, Any]:
        return {
            "last_scrub": self.last_scrub,
            "last_deep_scrub": self.last_deep_scrub,
            "objects": self.scrub_objects,
            "errors_found": self.scrub_errors_found,
            "errors_left": len(self.known_errors),
            "errors": [e.to_report() for e in self.known_errors[:100]],
            "scrubbing": self.scrubbing,
            "read_repairs": self.read_repairs,
        }

    def _check_scrubbable(self, interval: int | None = None) -> None:
        if self.group.state != "active":
            raise RemoteError(
                Code.EAGAIN,
                f"pg {self.group.name} is {self.group.state}: only its active primary scrubs it",
            )
        if interval is not None and interval != self.group.interval_epoch:
            raise RemoteError(
                Code.EAGAIN, f"pg {self.group.name} changed its acting set: scrub again"
            )

    def _auto_repair(self) -> bool:
        """The daemon's ``scrub_auto_repair`` setting; on unless it says otherwise."""
        return bool(getattr(getattr(self.group.host, "config", None), "scrub_auto_repair", True))

    async def scrub(self, *, deep: bool, repair: bool, scheduled: bool = False) -> dict[str, Any]:
        """Scrub the PG across its primary and active members and answer with a report.

        Bad copies are replaced from the authoritative one when ``repair`` is asked for, and
        also after any scrub that finds errors unless the daemon's ``scrub_auto_repair`` is
        off. Scrubs of one PG run one after another; only its active primary runs them.
        """
        self._check_scrubbable()
        async with self._scrub_lock:
            self._check_scrubbable()
            interval = self.group.interval_epoch
            tally = ScrubTally(self.group.name, deep)
            self.scrubbing = "deep" if deep else "light"
            try:
                await self._scrub_pages(tally, interval, repair or self._auto_repair())
            finally:
                self.scrubbing = None
            now = time.time()
            self.last_scrub = now
            if deep:
                self.last_deep_scrub = now
            await self._record_stamps()
            self.scrub_objects = tally.objects
            self.scrub_errors_found = tally.found_count
            self.known_errors = merge_known_errors(self.known_errors, tally.left, deep=deep)
        report = tally.report()
        level = logging.WARNING if tally.found_count else logging.INFO
        log.log(
            level,
            "pg %s: %s%s of %d objects: %d errors, %d repaired",
            self.group.name,
            "scheduled " if scheduled else "",
            "deep scrub" if deep else "scrub",
            tally.objects,
            tally.found_count,
            tally.repaired,
        )
        return report

    async def _scrub_pages(self, tally: ScrubTally, interval: int, repair: bool) -> None:
        me = self.group.host.osd_id
        members = [m for m in self.group.acting[1:] if m in self.group.active]
        order = [me, *members]
        tally.skipped = [m for m in self.group.acting[1:] if m not in self.group.active]
        cursor: str | None = None
        while True:
            self._check_scrubbable(interval)
            local = await read_scrub_page(
                self.group.host.store,
                self.group.pool_id,
                self.group.pg,
                deep=tally.deep,
                after=cursor,
                limit=PAGE_OBJECTS,
            )
            maps: dict[int, dict[str, ScrubEntry]] = {me: dict(local.entries)}
            heads = {me: local.head}
            failures: list[StoreError] = []
            async with trio.open_nursery() as nursery:
                for member in members:
                    nursery.start_soon(
                        self._scrub_range,
                        member,
                        tally.deep,
                        (cursor, local.next),
                        (maps, heads, failures),
                    )
            if failures:
                raise failures[0]
            tally.objects += len(set().union(*maps.values()))
            verdicts = compare_maps(maps, order, heads)
            if verdicts:
                verdicts = await self._scrub_confirm(verdicts, maps, order, tally)
            for verdict in verdicts:
                repaired = await self._repair(verdict, tally) if repair else set()
                tally.judged(verdict, repaired)
                self._check_scrubbable(interval)
            if local.next is None:
                return
            cursor = local.next
            await trio.sleep(SCRUB_PAGE_PAUSE)

    async def _scrub_read(self, member: int, deep: bool, **where: Any) -> ScrubPage:
        """A page of a member's scrub map (ours read locally)."""
        if member == self.group.host.osd_id:
            return await read_scrub_page(
                self.group.host.store, self.group.pool_id, self.group.pg, deep=deep, **where
            )
        try:
            conn = await self.group.host.peer(member)
            raw = await conn.call(
                "scrub_map",
                {"pool": self.group.pool_id, "pg": self.group.pg, "deep": deep, **where},
                timeout=SCRUB_CALL_TIMEOUT,
            )
            return ScrubPage.from_wire_untrusted(raw)
        except (StoreError, OSError) as exc:
            raise RemoteError(
                Code.EAGAIN, f"pg {self.group.name}: osd.{member} did not answer the scrub: {exc}"
            ) from None

    async def _scrub_range(
        self,
        member: int,
        deep: bool,
        bounds: tuple[str | None, str | None],
        into: tuple[dict[int, dict[str, ScrubEntry]], dict[int, Version], list[StoreError]],
    ) -> None:
        """Into ``maps`` and ``heads``: a member's scrub map of the objects named in
        (after, upto], in as many pages as it takes; into ``failures`` why not."""
        maps, heads, failures = into
        try:
            maps[member], heads[member] = await self._scrub_range_pages(member, deep, *bounds)
        except StoreError as exc:
            failures.append(exc)

    async def _scrub_range_pages(
        self, member: int, deep: bool, after: str | None, upto: str | None
    ) -> tuple[dict[str, ScrubEntry], Version]:
        entries: dict[str, ScrubEntry] = {}
        head: Version | None = None
        cursor = after
        while True:
            page = await self._scrub_read(member, deep, after=cursor, upto=upto, limit=PAGE_OBJECTS)
            entries.update(
                (name, entry)
                for name, entry in page.entries
                if (after is None or name > after) and (upto is None or name <= upto)
            )
            head = page.head if head is None else min(head, page.head)
            if page.next is None:
                return entries, head
            if (cursor is not None and page.next <= cursor) or (upto and page.next >= upto):
                raise RemoteError(
                    Code.EAGAIN,
                    f"pg {self.group.name}: osd.{member} sent a scrub page out of order",
                )
            cursor = page.next

    async def _scrub_confirm(
        self,
        verdicts: list[Verdict],
        maps: dict[int, dict[str, ScrubEntry]],
        order: list[int],
        tally: ScrubTally,
    ) -> list[Verdict]:
        """Differences seen in maps read while writes went on, judged again once the writes
        then in flight have reached every member; objects written in between are left to the
        next scrub."""
        await self.group.forwards_landed()
        names = [v.name for v in verdicts]
        sizes = {
            name: max((e.size for m in order if (e := maps[m].get(name)) is not None), default=0)
            for name in names
        }
        budget = DEEP_PAGE_BYTES if tally.deep else 1 << 62
        again: dict[int, dict[str, ScrubEntry]] = {m: {} for m in order}
        heads: dict[int, Version] = {}
        for batch in batches_by_size(names, sizes, budget, PAGE_OBJECTS):
            for member in order:
                page = await self._scrub_read(member, tally.deep, names=batch)
                again[member].update(e for e in page.entries if e[0] in sizes)
                heads[member] = min(heads.get(member, page.head), page.head)
        me = order[0]
        stable = [n for n in names if not changed_between(maps[me].get(n), again[me].get(n))]
        tally.changed += len(names) - len(stable)
        return compare_maps(again, order, heads, names=stable)

    async def _repair(self, verdict: Verdict, tally: ScrubTally) -> set[int]:
        """Replace the bad copies of one object by the authoritative one; the members whose
        copy was replaced. A copy newer than the one judged is never touched."""
        if verdict.authoritative is None:
            return set()
        state = await self._fetch_state(verdict.authoritative, verdict.name)
        if state is None:
            return set()
        if state.version != verdict.version:
            tally.changed += 1  # written since it was judged: the next scrub looks again
            return set()
        repaired: set[int] = set()
        for problem in verdict.bad:
            try:
                if await self._install_copy(problem.osd, state):
                    repaired.add(problem.osd)
            except (StoreError, OSError) as exc:
                log.warning(
                    "pg %s: repairing %r on osd.%d failed: %s",
                    self.group.name,
                    verdict.name,
                    problem.osd,
                    exc,
                )
        if repaired:
            log.info(
                "pg %s: repaired %r on %s from osd.%d",
                self.group.name,
                verdict.name,
                ", ".join(f"osd.{m}" for m in sorted(repaired)),
                verdict.authoritative,
            )
        return repaired

    async def _fetch_state(self, member: int, name: str) -> ObjectState | None:
        try:
            if member == self.group.host.osd_id:
                return self.group.host.store.object_state(self.group.pool_id, name)
            conn = await self.group.host.peer(member)
            raw = await conn.call(
                "object_state",
                {"pool": self.group.pool_id, "name": name},
                timeout=SCRUB_CALL_TIMEOUT,
            )
            return ObjectState.from_wire(raw)
        except (StoreError, OSError) as exc:
            log.warning("pg %s: cannot read %r from osd.%d: %s", self.group.name, name, member, exc)
            return None

    async def _install_copy(self, member: int, state: ObjectState) -> bool:
        """Install ``state`` over a member's copy of the same or an older version."""
        if member == self.group.host.osd_id:
            txn = ObjectStateTxn(self.group.pool_id, self.group.pg, state, replace_equal=True)
            result = await self.group.host.writes.submit(txn).wait()
            return result.code == Code.OK and result.results == [True]
        conn = await self.group.host.peer(member)
        answer = await conn.call(
            "push",
            {
                "pool": self.group.pool_id,
                "pg": self.group.pg,
                "state": state.to_wire(),
                "repair": True,
            },
            timeout=SCRUB_CALL_TIMEOUT,
        )
        PEER_TRAFFIC.pushed(state)
        return isinstance(answer, dict) and answer.get("installed") is True

    # --- read repair ---------------------------------------------------------------------

    async def read_repair(self, name: str, version: Version) -> bool:
        """Our copy of ``name`` failed its checksum on a client read: replace it by an active
        member's copy of the same ``version``. True when the caller should read again (our
        copy was replaced, or another repair of it just finished)."""
        running = self._read_repairs.get(name)
        if running is not None:
            await running.wait()
            return True
        done = self._read_repairs[name] = trio.Event()
        try:
            return await self._read_repair(name, version)
        finally:
            del self._read_repairs[name]
            done.set()

    async def _read_repair(self, name: str, version: Version) -> bool:
        me = self.group.host.osd_id
        for member, conn in list(self.group.active.items()):
            try:
                raw = await conn.call(
                    "object_state", {"pool": self.group.pool_id, "name": name}, timeout=15
                )
                state = ObjectState.from_wire(raw)
            except (StoreError, OSError) as exc:
                log.info(
                    "pg %s: osd.%d has no good copy of %r: %s", self.group.name, member, name, exc
                )
                continue
            if state.version != version:
                continue  # not the copy the reader asked for
            txn = ObjectStateTxn(self.group.pool_id, self.group.pg, state, replace_equal=True)
            result = await self.group.host.writes.submit(txn).wait()
            if result.code != Code.OK or result.results != [True]:
                return result.code == Code.OK  # ours changed meanwhile: read it again
            self.read_repairs += 1
            self.known_errors = [e for e in self.known_errors if (e.name, e.osd) != (name, me)]
            log.warning(
                "pg %s: our copy of %r failed its checksum; replaced it from osd.%d",
                self.group.name,
                name,
                member,
            )
            return True
        log.error(
            "pg %s: our copy of %r failed its checksum and no active member has a good copy "
            "of version %s",
            self.group.name,
            name,
            version,
        )
        problem = "read error: checksum mismatch on a client read, no good copy to repair from"
        if not any((e.name, e.osd) == (name, me) for e in self.known_errors):
            self.known_errors.append(ScrubError(name, me, problem, deep=True))
        return False
