"""Bringing a PG's members up to date, run by its primary (see ``store.osd.pg``).

For a member that is not active the primary reads the member's newest version ``s``. If its
own log reaches back to ``s`` it pushes the current state of every object the log changed
since (log replay); otherwise the member is *backfilled*: both object lists are compared
whole and every object pushed, authoritatively (the member's history may have diverged),
once a backfill slot is free here and on the member (``max_backfills``). Then the member is
told its history now ends at the last version the primary had forwarded; it becomes active
when that is the primary's newest. The last short round holds new writes back so that this
moment comes under a steady stream of writes. Rounds repeat, with a growing pause after
errors, until the member is active or the interval ends.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from store.errors import StoreError
from store.metrics.osd import PEER_TRAFFIC
from store.osd.objectstore import ObjectStore
from store.osd.ops import parse_version_untrusted
from store.rpc import RpcConnection

if TYPE_CHECKING:
    from store.osd.pg import PlacementGroup, Version

log = logging.getLogger("store.osd")

PAUSE_BELOW = 32  # entries left to recover under which the last round holds writes back
# How much of its log a daemon hands over with copied state: the request ids a member
# that was recovered from scratch still recognises.
ADOPT_LOG_ENTRIES = 1000


class MemberRecovery:
    """The recoveries of one PG's members in the current interval, and their progress."""

    def __init__(self, group: PlacementGroup) -> None:
        self.group = group
        self.recovering: set[int] = set()
        self.backfilling: set[int] = set()  # recovering members being compared whole
        self.backfill_waiting: set[int] = set()  # ... waiting for backfill slots to be
        self.left: dict[int, int] = {}  # objects a member still lacks, once its round listed them

    def reset(self) -> None:
        """A new interval: the recoveries of the last one were cancelled with it."""
        self.recovering.clear()
        self.backfilling.clear()
        self.backfill_waiting.clear()
        self.left.clear()

    def start(self, member: int) -> None:
        g = self.group
        if member in self.recovering or g.interval_nursery is None or member not in g.acting:
            return
        self.recovering.add(member)
        PEER_TRAFFIC.recovery_started(g.name, member)
        g.interval_nursery.start_soon(self._recover, member)

    async def _recover(self, member: int) -> None:
        g = self.group
        delay = 0.2
        try:
            while member not in g.active:
                try:
                    await self._round(member)
                    delay = 0.2
                except Exception as exc:
                    if isinstance(exc, (StoreError, OSError)):
                        # Said once at INFO; the retries (every few seconds) at DEBUG.
                        level = logging.INFO if delay == 0.2 else logging.DEBUG
                        log.log(
                            level, "pg %s: recovering osd.%d: %s; retrying", g.name, member, exc
                        )
                    else:
                        log.exception("pg %s: recovering osd.%d failed; retrying", g.name, member)
                    await trio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            PEER_TRAFFIC.recovery_finished(g.name, member, member in g.active)
            self.recovering.discard(member)
            self.left.pop(member, None)
            if g.interim and all(m in g.active for m in g.acting[1:]):
                log.info(
                    "pg %s: every member recovered; %s no longer needed",
                    g.name,
                    ", ".join(f"osd.{m}" for m in sorted(g.interim)),
                )
                g.interim.clear()

    async def _round(self, member: int) -> None:
        g = self.group
        conn = await g.host.peer(member)
        args = {"pool": g.pool_id, "pg": g.pg}
        info_args = {**args, "epoch": g.interval_epoch}
        theirs = parse_version_untrusted((await conn.call("pg_info", info_args, timeout=15))["v"])
        if theirs == g.last_forwarded:
            g.active[member] = conn
            log.info("pg %s: osd.%d is up to date", g.name, member)
            return
        store = g.host.store
        # What the member will be told it holds once pushed: committed here before the
        # objects to push are listed, so that the list covers it (the last version
        # forwarded may still be flushing: store.osd.pg, Replication).
        target = g.last_committed
        # The log serves only if the member's newest version is in our history; a member
        # that wrote elsewhere (an old primary's unacknowledged writes) is listed whole.
        entries = store.pg_log_since(g.pool_id, g.pg, theirs[1] - 1) if theirs[1] else None
        if entries and entries[0].version == theirs and theirs <= g.last_forwarded:
            names = sorted({e.name for e in entries[1:]})
            await self._push_round(conn, names, member, target)
            return
        # A backfill: whole PGs compared, maybe a disk's worth of data. It waits for a slot
        # here and on the member (max_backfills each), and lists once it has them.
        self.backfill_waiting.add(member)
        try:
            async with g.host.throttle.backfill(conn, g.pool_id, g.pg, g.host.osd_id):
                self.backfill_waiting.discard(member)
                self.backfilling.add(member)
                target = g.last_committed  # before listing, as above
                names = sorted(
                    set(local_names(store, g.pool_id, g.pg))
                    | set(await remote_names(conn, g.pool_id, g.pg))
                )
                # The member's newest version may be of a divergent history (an old
                # primary's writes never acknowledged): our state wins, even if older.
                await self._push_round(conn, names, member, target, authoritative=True)
        finally:
            self.backfill_waiting.discard(member)
            self.backfilling.discard(member)

    async def _push_round(
        self,
        conn: RpcConnection,
        names: list[str],
        member: int,
        target: Version,
        authoritative: bool = False,
    ) -> None:
        """Push the current state of `names` to the member, then tell it that its history
        ends at `target` (a version that the states of `names` hold)."""
        g = self.group
        store = g.host.store
        args = {"pool": g.pool_id, "pg": g.pg}
        push_args: dict[str, Any] = dict(args)
        if authoritative:
            push_args.update(authoritative=True, epoch=g.interval_epoch, **{"from": g.host.osd_id})
        hold = len(names) < PAUSE_BELOW
        if hold:
            g.held_writes = trio.Event()
        try:
            self.left[member] = len(names)
            for name in names:
                state = store.object_state(g.pool_id, name)
                if not hold:  # writes wait on a held round: no throttling then
                    await g.host.throttle.spend(len(state.data))
                await conn.call("push", {**push_args, "state": state.to_wire()}, timeout=60)
                PEER_TRAFFIC.pushed(state)
                self.left[member] -= 1
            # Our log goes along (see PlacementGroup._pull_from), up to the version the
            # member now has.
            history = [
                e.to_wire()
                for e in store.pg_log_last(g.pool_id, g.pg, ADOPT_LOG_ENTRIES + 64)
                if e.version <= target
            ][-ADOPT_LOG_ENTRIES:]
            await conn.call("pg_mark", {**args, "v": list(target), "entries": history})
            if hold and target == g.last_forwarded:
                g.active[member] = conn
                log.info("pg %s: osd.%d recovered (%d objects)", g.name, member, len(names))
        finally:
            if hold and g.held_writes is not None:
                g.held_writes.set()
                g.held_writes = None


async def remote_names(conn: RpcConnection, pool: int, pg: int) -> list[str]:
    """Every object a member holds of the PG, listed page by page over its link."""
    names: list[str] = []
    cursor: str | None = None
    while True:
        result = await conn.call(
            "list_pg", {"pool": pool, "pg": pg, "cursor": cursor, "limit": 1000}
        )
        names.extend(entry[0] for entry in result["objects"])
        cursor = result["next"]
        if cursor is None:
            return names


def local_names(store: ObjectStore, pool: int, pg: int) -> list[str]:
    """Every object we hold of the PG."""
    names: list[str] = []
    cursor: str | None = None
    while True:
        batch, cursor = store.list_pg(pool, pg, cursor, 1000)
        names.extend(entry[0] for entry in batch)
        if cursor is None:
            return names
