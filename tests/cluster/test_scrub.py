"""Scrub, deep scrub and repair on real daemons: damage made behind a daemon's back in its
data file or its database is found, reported, and repaired from a good copy."""

from __future__ import annotations

import json
import sqlite3
import time
from array import array
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import trio

from store.client.api import Client
from store.errors import Code, RemoteError, single_error
from store.osd.blockmap import BLOCK_INDEX_BITS, CHUNK_BLOCKS
from tests.cluster.harness import Cluster

BS = 4096
NO_SCHEDULE = ["--scrub-interval", "0", "--deep-scrub-interval", "0"]


def start_cluster(root: Path, osd_extra: list[str], pg_num: int) -> Cluster:
    cluster = Cluster(root)
    try:
        cluster.start_master()
        for i in range(3):
            cluster.start_osd(i, extra=osd_extra)
            cluster.wait_registered(i)
        cluster.cli("pool", "create", "default", "--size", "3", "--pg-num", str(pg_num))
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three daemons that scrub only on demand, repairing what they find (the default)."""
    made = start_cluster(tmp_path_factory.mktemp("scrub"), NO_SCHEDULE, pg_num=8)
    try:
        yield made
    finally:
        made.stop()


# --- helpers ----------------------------------------------------------------------------


def locate(cluster: Cluster, name: str) -> dict[str, Any]:
    """The object's PG, acting set and primary, by `store stat`."""
    found: dict[str, Any] = json.loads(
        cluster.cli("stat", "--pool", "default", name, "--json").stdout
    )
    return found


def scrub(cluster: Cluster, action: str, pgid: str) -> tuple[int, dict[str, Any]]:
    """`store pg scrub|deep-scrub|repair PGID --json`: its exit code and report."""
    result = cluster.cli("pg", action, pgid, "--json", check=False)
    if not result.stdout:
        raise AssertionError(f"store pg {action} {pgid} failed: {result.stderr.decode()}")
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def pg_state(cluster: Cluster, pgid: str) -> str:
    rows = json.loads(cluster.cli("pg", "ls", "--json").stdout)
    return str(next(r["state"] for r in rows if r["pgid"] == pgid))


def wait_for_state(cluster: Cluster, pgid: str, wanted: str, present: bool = True) -> str:
    deadline = time.monotonic() + 30
    while True:
        state = pg_state(cluster, pgid)
        if (wanted in state.split("+")) == present:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"pg {pgid} stayed {state!r} (waiting for {wanted!r})")
        time.sleep(0.2)


def store_db(cluster: Cluster, osd: int) -> sqlite3.Connection:
    db = sqlite3.connect(cluster.root / f"osd.{osd}" / "store.db", timeout=10)
    db.execute("PRAGMA busy_timeout = 10000")
    return db


def block_slot(cluster: Cluster, osd: int, name: str, index: int) -> int:
    """The slot of the data file that holds block ``index`` of ``name`` on a daemon, read
    from its block map (see store.osd.objectdata)."""
    with closing(store_db(cluster, osd)) as db:
        (oid,) = db.execute("SELECT oid FROM objects WHERE name = ?", (name,)).fetchone()
        row = oid << BLOCK_INDEX_BITS | index // CHUNK_BLOCKS
        (raw,) = db.execute("SELECT map FROM blockmap WHERE id = ?", (row,)).fetchone()
    entries = array("q")
    entries.frombytes(raw)
    slot = entries[2 * (index % CHUNK_BLOCKS)]
    assert slot >= 0
    return int(slot)


def stored_block(cluster: Cluster, osd: int, name: str, index: int) -> bytes:
    """Block ``index`` of ``name`` as it lies in a daemon's data file."""
    slot = block_slot(cluster, osd, name, index)
    with open(cluster.root / f"osd.{osd}" / "blocks.dat", "rb") as f:
        f.seek(slot * BS)
        return f.read(BS)


def corrupt(cluster: Cluster, osd: int, name: str, index: int = 0) -> None:
    """Flip bits of one byte of a block in a daemon's data file, behind its back."""
    slot = block_slot(cluster, osd, name, index)
    with open(cluster.root / f"osd.{osd}" / "blocks.dat", "r+b") as f:
        f.seek(slot * BS + 100)
        byte = f.read(1)
        f.seek(slot * BS + 100)
        f.write(bytes([byte[0] ^ 0xFF]))


def remove_object(cluster: Cluster, osd: int, name: str) -> None:
    """Make a daemon lose an object: its rows go from the database, no tombstone left."""
    with closing(store_db(cluster, osd)) as db, db:
        (oid,) = db.execute("SELECT oid FROM objects WHERE name = ?", (name,)).fetchone()
        base = oid << BLOCK_INDEX_BITS
        db.execute(
            "DELETE FROM blockmap WHERE id BETWEEN ? AND ?",
            (base, base + (1 << BLOCK_INDEX_BITS) - 1),
        )
        for table in ("xattrs", "omap", "objects"):
            db.execute(f"DELETE FROM {table} WHERE oid = ?", (oid,))


def has_object(cluster: Cluster, osd: int, name: str) -> bool:
    with closing(store_db(cluster, osd)) as db:
        row = db.execute("SELECT live FROM objects WHERE name = ?", (name,)).fetchone()
    return bool(row and row[0])


async def write(cluster: Cluster, name: str, data: bytes) -> dict[str, Any]:
    async with Client.connect(cluster.config()) as client:
        await client.write_full("default", name, data)
        await client.setxattr("default", name, "kind", b"test")
    return await trio.to_thread.run_sync(locate, cluster, name)


async def read(cluster: Cluster, name: str) -> bytes:
    async with Client.connect(cluster.config()) as client:
        return await client.read("default", name)


def content(seed: int, size: int = 3 * BS + 123) -> bytes:
    return bytes((seed * 7 + i * 13) % 251 for i in range(size))


# --- on demand, repairing --------------------------------------------------------------------


async def test_deep_scrub_finds_a_damaged_replica_and_repairs_it(cluster: Cluster) -> None:
    data = content(1)
    where = await write(cluster, "replica-damage", data)
    pgid, replica = where["pg"], where["acting"][1]
    corrupt(cluster, replica, "replica-damage", index=1)

    # A light scrub reads no data: it cannot see the damage.
    code, report = await trio.to_thread.run_sync(scrub, cluster, "scrub", pgid)
    assert code == 0 and report["errors"] == [] and not report["deep"]
    assert report["pg"] == pgid and report["objects"] >= 1

    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert report["deep"] and report["errors"] == [
        {
            "object": "replica-damage",
            "osd": replica,
            "problem": "read error: checksum mismatch in object 'replica-damage' block 1",
        }
    ]
    assert report["repaired"] == 1 and code == 0  # auto-repair is on by default
    assert stored_block(cluster, replica, "replica-damage", 1) == data[BS : 2 * BS]

    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert code == 0 and report["errors"] == [] and report["repaired"] == 0
    assert "inconsistent" not in pg_state(cluster, pgid).split("+")
    assert await read(cluster, "replica-damage") == data


async def test_a_read_of_a_damaged_primary_copy_is_served_from_a_replica(
    cluster: Cluster,
) -> None:
    data = content(2)
    where = await write(cluster, "primary-damage", data)
    pgid, primary = where["pg"], where["primary"]
    corrupt(cluster, primary, "primary-damage", index=0)

    assert await read(cluster, "primary-damage") == data  # not EIO: read repair
    assert stored_block(cluster, primary, "primary-damage", 0) == data[:BS]
    assert "failed its checksum; replaced it from osd." in cluster.log(f"osd.{primary}")
    # The copy was repaired by the read, before any scrub.
    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert code == 0 and report["errors"] == []


async def test_deep_scrub_repairs_the_primary_copy_from_the_replicas(cluster: Cluster) -> None:
    data = content(3)
    where = await write(cluster, "primary-scrubbed", data)
    pgid, primary = where["pg"], where["primary"]
    corrupt(cluster, primary, "primary-scrubbed", index=3)

    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert [(e["object"], e["osd"]) for e in report["errors"]] == [("primary-scrubbed", primary)]
    assert report["repaired"] == 1 and code == 0
    assert stored_block(cluster, primary, "primary-scrubbed", 3)[:123] == data[3 * BS :]
    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert code == 0 and report["errors"] == []


async def test_light_scrub_finds_an_object_missing_on_a_replica(cluster: Cluster) -> None:
    data = content(4, 5000)
    where = await write(cluster, "lost-on-replica", data)
    pgid, replica = where["pg"], where["acting"][2]
    remove_object(cluster, replica, "lost-on-replica")
    assert not has_object(cluster, replica, "lost-on-replica")

    code, report = await trio.to_thread.run_sync(scrub, cluster, "scrub", pgid)
    [error] = report["errors"]
    assert error["object"] == "lost-on-replica" and error["osd"] == replica
    assert error["problem"].startswith("missing")
    assert report["repaired"] == 1 and code == 0
    assert has_object(cluster, replica, "lost-on-replica")
    assert stored_block(cluster, replica, "lost-on-replica", 1)[: 5000 - BS] == data[BS:]

    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert code == 0 and report["errors"] == []


async def test_with_no_good_copy_reads_fail_and_the_pg_is_inconsistent(cluster: Cluster) -> None:
    where = await write(cluster, "all-damaged", content(5))
    pgid = where["pg"]
    for osd in where["acting"]:
        corrupt(cluster, osd, "all-damaged", index=2)

    with pytest.raises(RemoteError) as failed:
        try:
            await read(cluster, "all-damaged")
        except BaseExceptionGroup as group:
            raise single_error(group) from None
    assert failed.value.code == Code.EIO
    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert code == 1 and report["repaired"] == 0
    assert sorted(e["osd"] for e in report["errors"]) == sorted(where["acting"])
    await trio.to_thread.run_sync(wait_for_state, cluster, pgid, "inconsistent")

    # Rewriting the object heals it; the next scrub says so.
    fresh = content(6)
    await write(cluster, "all-damaged", fresh)
    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert code == 0 and report["errors"] == []
    await trio.to_thread.run_sync(wait_for_state, cluster, pgid, "inconsistent", False)
    assert await read(cluster, "all-damaged") == fresh


async def test_scrubs_of_a_busy_pg_report_no_false_errors(cluster: Cluster) -> None:
    """Writes go on while the PG is scrubbed: maps read a moment apart differ, and none
    of that may be reported as damage."""
    name = "busy-0"
    pgid = (await write(cluster, name, content(7)))["pg"]
    async with Client.connect(cluster.config()) as client:
        names = [f"busy-{i}" for i in range(200)]
        same_pg = [n for n in names if client.locate("default", n)["pg"] == pgid]
        reports: list[dict[str, Any]] = []

        async def keep_writing(stop: trio.Event) -> None:
            i = 0
            while not stop.is_set():
                await client.write_full("default", same_pg[i % len(same_pg)], content(i, 9000))
                i += 1

        async def scrub_twice(stop: trio.Event) -> None:
            for action in ("scrub", "deep-scrub"):
                code, report = await trio.to_thread.run_sync(scrub, cluster, action, pgid)
                assert code == 0, report
                reports.append(report)
            stop.set()

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_writing, stop)
            nursery.start_soon(scrub_twice, stop)
    assert [r["errors"] for r in reports] == [[], []]


# --- on a schedule, without auto-repair -------------------------------------------------


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three daemons that scrub every PG every second (deeply every two) and repair only
    when told to."""
    extra = ["--scrub-interval", "1", "--deep-scrub-interval", "2", "--no-scrub-auto-repair"]
    made = start_cluster(tmp_path_factory.mktemp("scheduled"), extra, pg_num=4)
    try:
        yield made
    finally:
        made.stop()


async def test_scheduled_deep_scrubs_find_damage_and_repair_fixes_it(scheduled: Cluster) -> None:
    cluster = scheduled
    data = content(8)
    where = await write(cluster, "scheduled", data)
    pgid, replica = where["pg"], where["acting"][1]
    corrupt(cluster, replica, "scheduled", index=0)

    # Found by the schedule alone, and left as it is: auto-repair is off.
    state = await trio.to_thread.run_sync(wait_for_state, cluster, pgid, "inconsistent")
    assert state.startswith("active+clean")
    assert stored_block(cluster, replica, "scheduled", 0) != data[:BS]
    query = json.loads(cluster.cli("pg", "query", pgid).stdout)
    assert query["scrub"]["errors_left"] == 1 and query["scrub"]["last_deep_scrub"] > 0

    code, report = await trio.to_thread.run_sync(scrub, cluster, "repair", pgid)
    assert [(e["object"], e["osd"]) for e in report["errors"]] == [("scheduled", replica)]
    assert report["repaired"] == 1 and code == 0
    assert stored_block(cluster, replica, "scheduled", 0) == data[:BS]
    await trio.to_thread.run_sync(wait_for_state, cluster, pgid, "inconsistent", False)
    code, report = await trio.to_thread.run_sync(scrub, cluster, "deep-scrub", pgid)
    assert code == 0 and report["errors"] == []
