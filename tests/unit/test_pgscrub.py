"""The primary's scrub shell (store.osd.pgscrub) over in-memory peers: what it finds, how
it repairs, read repair, and the PG state it shows."""

from __future__ import annotations

import inspect
from collections import Counter, deque
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from store.errors import Code, RemoteError
from store.osd.objectstore import ObjectStore
from store.osd.ops import Delete, SetXattr, WriteFull
from store.osd.peers import PEER_OPS
from store.osd.pg import PlacementGroup
from store.osd.scrub import (
    ScrubError,
    ScrubTally,
    compare_maps,
)
from store.osd.throttle import RecoveryThrottle
from store.osd.write_queue import WriteQueue
from store.placement import ClusterMap
from store.wire.frames import FrameDecoder, encode_frame
from tests.unit.objectstore_support import BS, POOL, corrupt_block, ok, primary, read_all, replica

# --- the PG's state while scrubbing ------------------------------------------------------------


class _Host:
    """Just enough of a daemon for a PlacementGroup that is not asked to do I/O."""

    osd_id = 0
    recent_maps: deque[ClusterMap] = deque()

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.writes = WriteQueue(store)
        self.map = ClusterMap(epoch=1, fsid="f", created=0.0, osds={}, pools={})


def test_the_pg_state_says_scrubbing_and_inconsistent(store: ObjectStore) -> None:
    pg = PlacementGroup(_Host(store), 1, 0)  # type: ignore[arg-type]
    pg.state = "active"
    assert pg.status() == "active+clean"
    pg.scrubber.scrubbing = "light"
    assert pg.status() == "active+clean+scrubbing"
    pg.scrubber.scrubbing = "deep"
    assert pg.status() == "active+clean+scrubbing+deep"
    pg.scrubber.scrubbing = None
    pg.scrubber.known_errors = [ScrubError("obj", 1, "data differs", deep=True)]
    assert pg.status() == "active+clean+inconsistent"
    info = pg.scrubber.scrub_info()
    assert info["errors_left"] == 1 and info["scrubbing"] is None
    assert info["errors"] == [{"object": "obj", "osd": 1, "problem": "data differs"}]
    pg.state = "replica"
    assert pg.status() is None


# --- the primary's scrub over in-memory peers ------------------------------------------------


class _Link:
    """A peer link that calls the peer's operation handlers directly, through the wire
    encoding of a real link."""

    def __init__(self, daemon: _Daemon) -> None:
        self.daemon = daemon

    async def call(self, op: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
        self.daemon.calls[op] += 1
        decoder = FrameDecoder()
        decoder.feed(encode_frame(args))
        outcome = PEER_OPS[op](self.daemon, decoder.next_frame())  # type: ignore[arg-type]
        if inspect.isawaitable(outcome):
            outcome = await outcome
        decoder.feed(encode_frame(outcome))
        return decoder.next_frame()


class _Daemon(_Host):
    def __init__(self, osd_id: int, store: ObjectStore, cluster: dict[int, _Daemon]) -> None:
        super().__init__(store)
        self.osd_id = osd_id
        self.cluster = cluster
        self.config = SimpleNamespace(scrub_auto_repair=False)
        self.throttle = RecoveryThrottle(max_backfills=1, max_rate_mb=0)
        self.pgs: dict[tuple[int, int], PlacementGroup] = {}
        self.calls: Counter[str] = Counter()

    async def peer(self, osd_id: int) -> _Link:
        return _Link(self.cluster[osd_id])

    async def pool_ready(self, pool_id: int) -> None:
        pass

    async def wait_for_epoch(self, epoch: int) -> None:
        pass


def _write_everywhere(daemons: list[_Daemon], name: str, data: bytes) -> tuple[int, int]:
    result = ok(primary(daemons[0].store, name, WriteFull(data), SetXattr("k", name.encode())))
    for daemon in daemons[1:]:
        ok(
            replica(
                daemon.store, name, result.version, WriteFull(data), SetXattr("k", name.encode())
            )
        )
    return result.version


def _forget(store: ObjectStore, name: str) -> None:
    """The daemon loses the object's rows, as if its database were damaged."""
    store._writer.execute("DELETE FROM objects WHERE pool = ? AND name = ?", (POOL, name))


@pytest.fixture
async def daemons(tmp_path: Path) -> AsyncIterator[list[_Daemon]]:
    cluster: dict[int, _Daemon] = {}
    for i in range(3):
        cluster[i] = _Daemon(i, ObjectStore(str(tmp_path / f"osd.{i}")), cluster)
    try:
        async with trio.open_nursery() as nursery:
            for daemon in cluster.values():
                nursery.start_soon(daemon.writes.run)
            yield list(cluster.values())
            nursery.cancel_scope.cancel()
    finally:
        for daemon in cluster.values():
            daemon.store.close()


def _primary_pg(daemons: list[_Daemon]) -> PlacementGroup:
    pg = PlacementGroup(daemons[0], POOL, 0)  # type: ignore[arg-type]
    pg.acting = (0, 1, 2)
    pg.active = {1: _Link(daemons[1]), 2: _Link(daemons[2])}  # type: ignore[dict-item]
    pg.state = "active"
    daemons[0].pgs[(POOL, 0)] = pg
    return pg


async def test_a_paged_deep_scrub_finds_every_kind_of_damage_and_repairs_it(
    daemons: list[_Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pages, and deep pages of about two objects: the map of 40 objects takes many.
    monkeypatch.setattr("store.osd.pgscrub.PAGE_OBJECTS", 7)
    monkeypatch.setattr("store.osd.scrub.DEEP_PAGE_BYTES", 2 * BS)
    data = {f"obj-{i:02}": bytes([i]) * (BS + i) for i in range(40)}
    for name, body in data.items():
        _write_everywhere(daemons, name, body)
    _write_everywhere(daemons, "gone", b"soon deleted")
    deleted = ok(primary(daemons[0].store, "gone", Delete())).version
    for daemon in daemons[1:]:
        ok(replica(daemon.store, "gone", deleted, Delete()))
    _forget(daemons[2].store, "gone")  # its tombstone only
    corrupt_block(daemons[1].store, "obj-13", 1)
    corrupt_block(daemons[0].store, "obj-30", 0)
    _forget(daemons[2].store, "obj-20")
    _forget(daemons[1].store, "obj-39")  # the last of the PG: the last page
    pg = _primary_pg(daemons)

    report = await pg.scrubber.scrub(deep=True, repair=False)
    assert daemons[1].calls["scrub_map"] >= 20  # 41 objects, about two per deep page
    assert report["objects"] == 41 and report["repaired"] == 0
    assert [(e["object"], e["osd"]) for e in report["errors"]] == [
        ("obj-13", 1),
        ("obj-20", 2),
        ("obj-30", 0),
        ("obj-39", 1),
        # "gone" is deleted: a tombstone and no row at all agree.
    ]
    assert pg.status() == "active+clean+inconsistent"
    assert pg.scrubber.scrub_info()["errors_left"] == 4 and pg.scrubber.last_deep_scrub > 0

    # A light scrub sees what lacks, not what is damaged; the damage stays known.
    light = await pg.scrubber.scrub(deep=False, repair=False)
    assert [(e["object"], e["osd"]) for e in light["errors"]] == [("obj-20", 2), ("obj-39", 1)]
    assert pg.scrubber.scrub_info()["errors_left"] == 4

    report = await pg.scrubber.scrub(deep=True, repair=True)
    assert report["repaired"] == 4 and report["unrepaired"] == 0
    assert pg.status() == "active+clean"
    for daemon in daemons:
        for name, body in data.items():
            assert read_all(daemon.store, name) == body, (daemon.osd_id, name)
    assert (await pg.scrubber.scrub(deep=True, repair=False))["errors"] == []


async def test_auto_repair_follows_the_daemon_setting(daemons: list[_Daemon]) -> None:
    version = _write_everywhere(daemons, "obj", b"a" * 3 * BS)
    corrupt_block(daemons[2].store, "obj", 2)
    pg = _primary_pg(daemons)
    daemons[0].config.scrub_auto_repair = True
    report = await pg.scrubber.scrub(deep=True, repair=False)
    assert report["errors"] == [
        {
            "object": "obj",
            "osd": 2,
            "problem": "read error: checksum mismatch in object 'obj' block 2",
        }
    ]
    assert report["repaired"] == 1
    assert read_all(daemons[2].store, "obj") == b"a" * 3 * BS
    assert daemons[2].store.stat(POOL, "obj") == daemons[0].store.stat(POOL, "obj")
    assert daemons[2].store.pg_info(POOL, 0).last_version == version


async def test_a_repair_never_puts_an_older_version_over_a_newer_one(
    daemons: list[_Daemon],
) -> None:
    _write_everywhere(daemons, "obj", b"old")
    pg = _primary_pg(daemons)
    corrupt_block(daemons[1].store, "obj", 0)
    [verdict] = compare_maps(
        {d.osd_id: dict(d.store.scrub_page(POOL, 0, deep=True).entries) for d in daemons},
        [0, 1, 2],
        {d.osd_id: d.store.pg_info(POOL, 0).last_version for d in daemons},
    )
    # Written after the maps were read: the judged version is gone, nothing is installed.
    newer = _write_everywhere(daemons, "obj", b"new")
    tally = ScrubTally(pg.name, deep=True)
    assert await pg.scrubber._repair(verdict, tally) == set() and tally.changed == 1
    assert read_all(daemons[1].store, "obj") == b"new"
    assert daemons[1].store.stat(POOL, "obj").version == newer  # type: ignore[union-attr]


async def test_read_repair_replaces_our_copy_from_a_member_of_the_same_version(
    daemons: list[_Daemon],
) -> None:
    version = _write_everywhere(daemons, "obj", b"r" * 2 * BS)
    corrupt_block(daemons[0].store, "obj", 1)
    corrupt_block(daemons[1].store, "obj", 0)  # the first member asked has no good copy
    pg = _primary_pg(daemons)
    assert await pg.scrubber.read_repair("obj", version)
    assert read_all(daemons[0].store, "obj") == b"r" * 2 * BS and pg.scrubber.read_repairs == 1
    # Nobody has a good copy: the read fails and the PG knows it is inconsistent.
    corrupt_block(daemons[0].store, "obj", 0)
    corrupt_block(daemons[2].store, "obj", 0)
    assert not await pg.scrubber.read_repair("obj", version)
    assert pg.status() == "active+clean+inconsistent"


async def test_a_scrub_needs_an_active_primary(daemons: list[_Daemon]) -> None:
    pg = _primary_pg(daemons)
    pg.state = "peering"
    with pytest.raises(RemoteError) as refused:
        await pg.scrubber.scrub(deep=False, repair=False)
    assert refused.value.code == Code.EAGAIN


async def test_scrub_stamps_survive_a_restart_and_pass_to_a_new_primary(
    daemons: list[_Daemon],
) -> None:
    _write_everywhere(daemons, "obj", b"x" * BS)
    pg = _primary_pg(daemons)
    assert (pg.scrubber.last_scrub, pg.scrubber.last_deep_scrub) == (0.0, 0.0)
    await pg.scrubber.scrub(deep=True, repair=False)
    stamps = (pg.scrubber.last_scrub, pg.scrubber.last_deep_scrub)
    assert stamps[0] > 0 and stamps[1] == stamps[0]
    # The daemon restarts: its PG object is made anew from the store.
    again = PlacementGroup(daemons[0], POOL, 0)  # type: ignore[arg-type]
    assert (again.scrubber.last_scrub, again.scrubber.last_deep_scrub) == stamps
    # Another member becomes primary: it hears the stamps in peering and keeps them.
    answer = await _Link(daemons[0]).call("pg_info", {"pool": POOL, "pg": 0, "epoch": 0})
    assert answer["scrub"] == list(stamps)
    new = PlacementGroup(daemons[1], POOL, 0)  # type: ignore[arg-type]
    new.scrubber.adopt_stamps(*answer["scrub"])
    new.scrubber.adopt_stamps(1.0, 2.0)  # older ones change nothing
    assert (new.scrubber.last_scrub, new.scrubber.last_deep_scrub) == stamps
    await daemons[1].writes.barrier().wait()
    assert daemons[1].store.pg_scrub_stamps(POOL, 0) == stamps
    # Stamps from the future (a member's clock ahead) are taken as now at most.
    new.scrubber.adopt_stamps(4e12, 0.0)
    assert stamps[0] <= new.scrubber.last_scrub < 4e12
