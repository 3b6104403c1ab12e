"""A placement group as its primary sees it: peering, ordered replication, recovery.

Theory of operation
-------------------
*Versions.* The primary gives every mutation of the PG a version ``(epoch, seq)``; ``seq``
grows by one per mutation, so it orders the PG's history, and every daemon logs the
mutations it applied (``ObjectStore``'s PG log).

*Interval and peering.* Each time the map changes the PG's acting set, a new interval
begins. Its primary first **peers**: it asks every up member for its newest version; if a
member has a newer history than the primary's own, the primary first pulls the objects
that history touched (by log when the member's log reaches back far enough, by a full
listing otherwise). Only then does it serve client I/O — a daemon that missed writes never
answers from stale data. Members exactly as new as the primary become *active*; the others
are recovered in the background.

*Replication.* A client write is applied by the primary through the write queue; once
its batch has run, and while the primary flushes it to disk, a callback (run in version
order) forwards it, with its version, to every active member at once, on connections that
keep order. The client is answered when the primary's commit is done, every active member
has written it durably and the copies number at least ``min_size``. So the primary's last
*forwarded* version may be ahead of its last *committed* one for the length of a flush;
what reads the primary's stored state as the PG's history up to some version (recovery's
target, scrub's second look) uses the committed one. A batch that fails after its writes
were forwarded stops the daemon (store.osd.write_queue). A member that fails a forward
(connection lost, timeout, or a gap in its log) stops being active and is recovered.

*Recovery of a member* (:mod:`store.osd.pgrecovery`). The primary pushes the whole current
state of every object the member may lack, then tells the member its history now ends at
the last version the primary had *forwarded*, ``f``. Writes with versions after ``f`` reach
the member as ordinary forwards; a forward older than what a push already installed is
logged but not re-applied. The member becomes active the moment its newest version equals
``f``.

*Scrub and repair* are in :mod:`store.osd.pgscrub`; divergent histories, moves and
recovery throttling in docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from store.errors import Code, RemoteError, StoreError
from store.metrics.osd import PEER_TRAFFIC
from store.osd.blocksums import sums_to_wire
from store.osd.objectstore import ObjectStore
from store.osd.ops import Op, detach_data, parse_version_untrusted
from store.osd.pglog import entries_from_wire
from store.osd.pgrecovery import ADOPT_LOG_ENTRIES, MemberRecovery, local_names, remote_names
from store.osd.pgscrub import PgScrub
from store.osd.pgstats import copy_shortfall
from store.osd.throttle import RecoveryThrottle
from store.osd.txns import (
    ObjectState,
    ObjectStateTxn,
    PgRemoveTxn,
    PgResetLogTxn,
    PrimaryTxn,
    ReplicaTxn,
    TxnResult,
)
from store.osd.write_queue import WriteQueue
from store.placement import ClusterMap, acting_set
from store.rpc import ConnectionLost, PendingCall, RpcConnection
from store.wire.frames import pack_args

log = logging.getLogger("store.osd")

Version = tuple[int, int]
REPLICATION_TIMEOUT = 10.0
RETIRE_FIRST_CHECK = 1.0  # seconds before a stray copy first asks whether it may go
RETIRE_MAX_WAIT = 30.0


class PgHost(Protocol):
    """What a placement group needs from its daemon."""

    osd_id: int
    store: ObjectStore
    writes: WriteQueue
    map: ClusterMap
    recent_maps: deque[ClusterMap]

    async def peer(self, osd_id: int) -> RpcConnection: ...

    def start_task(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...

    async def pool_ready(self, pool_id: int) -> None: ...

    @property
    def throttle(self) -> RecoveryThrottle: ...


@dataclass
class _Forward:
    seq: int
    calls: dict[int, tuple[RpcConnection, PendingCall]] = field(default_factory=dict)


class PlacementGroup:
    def __init__(self, host: PgHost, pool_id: int, pg: int) -> None:
        self.host = host
        self.pool_id, self.pg = pool_id, pg
        self.acting: tuple[int, ...] = ()
        self.interval_epoch = 0
        self.state = "inactive"  # peering | active | replica | down
        self.active: dict[int, RpcConnection] = {}  # members (not us) that receive forwards
        # Former members, complete when this interval began, that keep receiving forwards
        # until every new member is recovered: redundancy never falls during a move.
        self.interim: dict[int, RpcConnection] = {}
        self.recovery = MemberRecovery(self)
        self.last_forwarded: Version = host.store.pg_info(pool_id, pg).last_version
        # The newest of our writes committed here (≤ last_forwarded: see Replication).
        self.last_committed: Version = self.last_forwarded
        self._scope: trio.CancelScope | None = None
        self.interval_nursery: trio.Nursery | None = None  # recoveries run in it
        self.held_writes: trio.Event | None = None  # set when writes held back may go
        self._inflight: dict[int, trio.Event] = {}  # seq -> set when its forward is answered
        self.scrubber = PgScrub(self)  # scrubs, repairs and what they found

    @property
    def name(self) -> str:
        return f"{self.pool_id}.{self.pg:x}"

    # --- intervals ---------------------------------------------------------------------

    def on_map(self, m: ClusterMap) -> None:
        acting = acting_set(m, self.pool_id, self.pg)
        if acting == self.acting and self.state != "inactive":
            return
        self.acting = acting
        self.interval_epoch = m.epoch
        if self._scope is not None:
            self._scope.cancel()
        self.active.clear()
        self.interim.clear()
        self.recovery.reset()
        if self.held_writes is not None:
            self.held_writes.set()
            self.held_writes = None
        self.interval_nursery = None
        if acting and acting[0] == self.host.osd_id:
            self.state = "peering"
            # Made here, not in the task: a second map arriving before the task runs must
            # be able to cancel this interval.
            self._scope = trio.CancelScope()
            self.host.start_task(self._run_interval, self._scope)
        else:
            self.state = "replica" if self.host.osd_id in acting else "stray"
            if self.state == "stray":
                self._scope = trio.CancelScope()
                self.host.start_task(self._retire, self._scope)

    def status(self) -> str | None:
        """The PG's state as `store status` shows it; None where we are not primary."""
        if self.state == "peering":
            return "peering"
        if self.state != "active":
            return None
        pool = self.host.map.pools.get(self.pool_id)
        # Former members still complete and receiving writes count: the data has its
        # copies, some only away from where placement wants them (+remapped).
        copies = 1 + len(self.active) + len(self.interim)
        state = "active"
        if self.interim:
            state += "+remapped"
        if self.recovery.backfilling:
            state += "+backfilling"
        elif self.recovery.backfill_waiting:
            state += "+backfill_wait"
        elif self.recovery.recovering:
            state += "+recovering"
        if pool is not None and copies < pool.size:
            state += "+degraded"
        if state == "active":
            state += "+clean"
        return state + self.scrubber.state_suffix()

    def copy_shortfall(self, objects: int) -> tuple[int, int]:
        """(degraded, misplaced) object copies, for a PG of `objects` objects; (0, 0)
        where we are not its active primary."""
        pool = self.host.map.pools.get(self.pool_id)
        if self.state != "active" or pool is None:
            return 0, 0
        left = self.recovery.left
        pending = [left.get(m) for m in self.acting[1:] if m not in self.active]
        return copy_shortfall(objects, pool.size, len(self.acting), pending, len(self.interim))

    def stop(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def _run_interval(self, scope: trio.CancelScope) -> None:
        with scope:
            await self.host.pool_ready(self.pool_id)
            async with trio.open_nursery() as nursery:
                if scope.cancel_called:
                    return
                self.interval_nursery = nursery
                while True:
                    try:
                        await self._peer()
                        break
                    except (StoreError, OSError) as exc:
                        log.info("pg %s: peering failed (%s); retrying", self.name, exc)
                        await trio.sleep(1.0)
                    except Exception:
                        log.exception("pg %s: peering failed; retrying", self.name)
                        await trio.sleep(1.0)
                for member in self.acting[1:]:
                    if member not in self.active:
                        self.recovery.start(member)
                # The nursery lives as long as the interval: a member dropped later (a
                # replica that stops answering without being marked down) is recovered in it.
                await trio.sleep_forever()
        if self._scope is scope:
            self.interval_nursery = None

    async def _retire(self, scope: trio.CancelScope) -> None:
        """A copy the acting set no longer includes goes once it is redundant: when the
        PG's primary, in the same interval we see, reports every member complete
        (active+clean at full size). Until then it stays, as a source for peering."""
        key = (self.pool_id, self.pg)
        delay = RETIRE_FIRST_CHECK
        with scope:
            while key in self.host.store.pgs():
                await trio.sleep(delay)
                delay = min(delay * 2, RETIRE_MAX_WAIT)
                target = self.acting[0] if self.acting else None
                if target is None or target == self.host.osd_id:
                    continue
                try:
                    conn = await self.host.peer(target)
                    answer = await conn.call(
                        "pg_state", {"pool": self.pool_id, "pg": self.pg}, timeout=15
                    )
                except (StoreError, OSError) as exc:
                    log.debug(
                        "pg %s: cannot ask osd.%d about our stray copy: %s", self.name, target, exc
                    )
                    continue
                if not isinstance(answer, dict) or answer.get("state") != "active+clean":
                    continue
                if list(answer.get("acting") or []) != list(self.acting):
                    continue  # the primary sees another interval than we do: ask again later
                result = await self.host.writes.submit(PgRemoveTxn(self.pool_id, self.pg)).wait()
                if result.code == Code.OK:
                    log.info(
                        "pg %s: removed our stray copy (%s objects); osd.%d has it clean",
                        self.name,
                        result.results[0] if result.results else 0,
                        target,
                    )
                return

    def past_members(self) -> list[int]:
        """Up daemons that held this PG (or, before a split, its parent) in recent maps
        and are not in its acting set now: they may have writes we lack."""
        m = self.host.map
        found: set[int] = set()
        for old in self.host.recent_maps:
            pool = old.pools.get(self.pool_id)
            if pool is None:
                continue
            # pg_num is a power of two: the PG an object of ours had then is a mask away.
            found.update(acting_set(old, self.pool_id, self.pg & (pool.pg_num - 1)))
        return sorted(
            osd for osd in found if osd not in self.acting and osd in m.osds and m.osds[osd].up
        )

    async def _peer(self) -> None:
        store = self.host.store
        infos: dict[int, Version] = {}
        for member in (*self.acting[1:], *self.past_members()):
            # A member that may hold newer writes must be heard before we serve: if it does
            # not answer, peering fails and is retried (until the map says it is down).
            conn = await self.host.peer(member)
            result = await conn.call(
                "pg_info",
                {"pool": self.pool_id, "pg": self.pg, "epoch": self.interval_epoch},
                timeout=15,
            )
            infos[member] = parse_version_untrusted(result["v"])
            stamps = result.get("scrub")
            if isinstance(stamps, list) and len(stamps) == 2:
                with contextlib.suppress(TypeError, ValueError):
                    self.scrubber.adopt_stamps(float(stamps[0]), float(stamps[1]))
        # Writes of the previous interval may still be queued here: let them land first,
        # so that our version counts them.
        await self.host.writes.barrier().wait()
        mine = store.pg_info(self.pool_id, self.pg).last_version
        best = max(infos, key=lambda m: infos[m], default=None)
        if best is not None and infos[best] > mine:
            log.info(
                "pg %s: pulling history %s..%s from osd.%d", self.name, mine, infos[best], best
            )
            await self._pull_from(best, mine, infos[best])
            mine = store.pg_info(self.pool_id, self.pg).last_version
        self.last_forwarded = max(self.last_forwarded, mine)
        self.last_committed = max(self.last_committed, mine)
        for member, version in infos.items():
            if version == mine and member in self.acting:
                self.active[member] = await self.host.peer(member)
        if any(member not in self.active for member in self.acting[1:]):
            for member, version in infos.items():
                if version == mine and member not in self.acting:
                    self.interim[member] = await self.host.peer(member)
            if self.interim:
                log.info(
                    "pg %s: %s keep receiving writes until %s are recovered",
                    self.name,
                    ", ".join(f"osd.{m}" for m in sorted(self.interim)),
                    ", ".join(f"osd.{m}" for m in self.acting[1:] if m not in self.active),
                )
        self.state = "active"
        log.debug(
            "pg %s active on osd.%d with %s", self.name, self.host.osd_id, sorted(self.active)
        )

    async def _pull_from(self, member: int, since: Version, until: Version) -> None:
        """Take the member's newer history: the objects its log changed since the last
        version both logs share — and the objects ours changed after that point, which
        were written by a primary whose writes were never acknowledged (their versions
        were used again by the next primary): those are rolled back to the member's
        state, even where it is older, or removed where it has none."""
        conn = await self.host.peer(member)
        store = self.host.store
        args = {"pool": self.pool_id, "pg": self.pg}
        ours = store.pg_log_last(self.pool_id, self.pg, store.max_log_entries)
        first = ours[0].version[1] - 1 if ours else since[1]
        result = await conn.call("pg_log_since", {**args, "seq": max(0, first)})
        names: set[str] | None = None
        if result["entries"] is not None:
            theirs = entries_from_wire(result["entries"])
            mine = {e.version[1]: e.version for e in ours}
            shared = [e.version for e in theirs if mine.get(e.version[1]) == e.version]
            common = max(shared) if shared else (since if not ours else None)
            if common is not None and (not theirs or theirs[0].version[1] <= common[1] + 1):
                names = {e.name for e in theirs if e.version > common}
                divergent = {e.name for e in ours if e.version > common}
                if divergent:
                    log.warning(
                        "pg %s: rolling back %d objects we wrote after %s that osd.%d's "
                        "history does not have",
                        self.name,
                        len(divergent),
                        common,
                        member,
                    )
                names |= divergent
        if names is None:
            # The logs do not meet: compare the whole PG.
            names = set(await remote_names(conn, self.pool_id, self.pg))
            names |= set(local_names(store, self.pool_id, self.pg))
        for name in sorted(names):
            raw = await conn.call("object_state", {"pool": self.pool_id, "name": name})
            state = ObjectState.from_wire(raw)
            PEER_TRAFFIC.pulled(state)
            txn = ObjectStateTxn(self.pool_id, self.pg, state, authoritative=True)
            await self.host.writes.submit(txn).wait()
        # Adopt the member's log with its state, request ids included, so that a client
        # retransmitting a write we only know as copied state is answered, not re-applied.
        result = await conn.call("pg_log_since", {**args, "seq": 0, "last": ADOPT_LOG_ENTRIES})
        entries = entries_from_wire(result["entries"])
        await self.host.writes.submit(PgResetLogTxn(self.pool_id, self.pg, until, entries)).wait()

    # --- client writes -------------------------------------------------------------------

    async def client_write(self, txn: PrimaryTxn, raw_ops: list[Any], min_size: int) -> TxnResult:
        if self.state != "active":
            raise RemoteError(Code.EAGAIN, f"pg {self.name} is {self.state}")
        while self.held_writes is not None:
            await self.held_writes.wait()
        if self.state != "active":  # the interval ended while we waited
            raise RemoteError(Code.EAGAIN, f"pg {self.name} is {self.state}")
        if 1 + len(self.active) < min_size:
            raise RemoteError(
                Code.EDEGRADED,
                f"pg {self.name} has {1 + len(self.active)} of min_size {min_size} copies up",
            )
        forwarded: list[_Forward] = []

        def on_executed(result: TxnResult) -> None:
            # Run, not yet flushed: the members write it while we flush.
            if result.version[1] > self.last_forwarded[1]:
                forwarded.append(self._forward(txn, raw_ops, result.version))

        def on_done(result: TxnResult) -> None:
            if result.code == Code.OK:
                self.last_committed = max(self.last_committed, result.version)

        result = await self.host.writes.submit(txn, on_done, on_executed).wait()
        if result.code != Code.OK:
            return result
        if not forwarded:
            # A repeat of a write already in the log: answer only once its own forward,
            # possibly still on its way to the members, has been acknowledged.
            for seq, acked in list(self._inflight.items()):
                if seq <= result.version[1]:
                    await acked.wait()
        # A repeat of a logged write forwards nothing: the active members have it already.
        copies = 1 + (await self._await_forward(forwarded[0]) if forwarded else len(self.active))
        if copies < min_size:
            raise RemoteError(Code.EDEGRADED, f"pg {self.name}: only {copies} copies written")
        return result

    def _forward(self, txn: PrimaryTxn, raw_ops: list[Any], version: Version) -> _Forward:
        forward = _Forward(seq=version[1])
        self._inflight[version[1]] = trio.Event()
        wire_ops, tail = detach_data(raw_ops)  # large data goes raw, after the map
        args = {
            "pool": self.pool_id,
            "pg": self.pg,
            "name": txn.name,
            "ops": wire_ops,
            "v": list(version),
            "reqid": txn.reqid,
            "epoch": self.interval_epoch,
            "from": self.host.osd_id,
        }
        sums = sums_to_wire(txn.ops, self.host.store.block_size)
        if sums:
            args["sums"] = sums  # the members need not hash the data again
        packed = pack_args(args)  # once for every member
        for member, conn in [*self.active.items(), *self.interim.items()]:
            try:
                call = conn.start_packed_call("repop", packed, tuple(tail))
                forward.calls[member] = (conn, call)
            except ConnectionLost:
                self._drop(member, "connection lost")
        PEER_TRAFFIC.forwarded(len(forward.calls), txn.ops)
        self.last_forwarded = version
        return forward

    async def _await_forward(self, forward: _Forward) -> int:
        try:
            return await self._collect_acks(forward)
        finally:
            done = self._inflight.pop(forward.seq, None)
            if done is not None:
                done.set()

    async def _collect_acks(self, forward: _Forward) -> int:
        # Every answer is needed, so waiting for each in turn takes as long as waiting for
        # all at once, without a task per member. A member whose link broke is dropped
        # once the others have answered (or the deadline passed), not at once.
        try:
            with trio.move_on_after(REPLICATION_TIMEOUT):
                for _, pending in forward.calls.values():
                    await pending.done.wait()
        except BaseException:
            for conn, pending in forward.calls.values():
                conn.abandon_call(pending)
            raise
        acked = 0
        for member, (conn, pending) in forward.calls.items():
            try:
                conn.settle_call(pending, "repop", REPLICATION_TIMEOUT)
                acked += member in self.acting  # an interim copy is extra, not a member's
            except (StoreError, OSError) as exc:
                self._drop(member, str(exc))
        return acked

    async def forwards_landed(self) -> None:
        """Wait (a while) until the writes forwarded so far are answered, and committed
        here too (a member may answer before our own flush is done)."""
        with trio.move_on_after(REPLICATION_TIMEOUT):
            for acked in list(self._inflight.values()):
                await acked.wait()
            await self.host.writes.barrier().wait()

    def _drop(self, member: int, why: str) -> None:
        if self.interim.pop(member, None) is not None:
            log.info("pg %s: osd.%d stops receiving interim writes (%s)", self.name, member, why)
        if self.active.pop(member, None) is not None:
            log.warning("pg %s: osd.%d fell behind (%s); recovering it", self.name, member, why)
            self.recovery.start(member)


def replica_txn_from_wire(args: dict[str, Any], ops: list[Op]) -> ReplicaTxn:
    version = args["v"]
    return ReplicaTxn(
        pool=int(args["pool"]),
        pg=int(args["pg"]),
        name=str(args["name"]),
        ops=ops,
        version=(int(version[0]), int(version[1])),
        reqid=str(args["reqid"]),
    )
