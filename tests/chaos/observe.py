"""Looking at a running cluster from outside: status, daemons, metrics, copies on disk.

Status and the daemon list are asked of the master over a fresh connection each time (the
same answer `store status --json` prints, without starting a process per poll), so they
work across a restart of the master. Copies are counted by reading each daemon's SQLite
database read-only beside it, as an operator could.
"""

from __future__ import annotations

import re
import sqlite3
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from store.client.config import ClientConfig
from store.client.master_link import MasterLink
from store.errors import StoreError
from store.placement import ClusterMap, acting_set, pg_of
from store.status import summarize
from tests.cluster.harness import Cluster

Version = tuple[int, int]


async def ask_master(config: ClientConfig, op: str, args: dict[str, Any] | None = None) -> Any:
    async with trio.open_nursery() as nursery:
        link = await MasterLink.open(config, nursery, subscribe=False)
        try:
            return await link.call(op, args, timeout=5.0)
        finally:
            nursery.cancel_scope.cancel()


async def status(cluster: Cluster) -> dict[str, Any] | None:
    """What `store status --json` shows; None while the master does not answer."""
    try:
        return summarize(await ask_master(cluster.config(timeout=5.0), "status"))
    except (StoreError, OSError):
        return None


async def osds(cluster: Cluster) -> dict[int, dict[str, Any]] | None:
    """Daemons as the master lists them (`store osd ls --json`), by id."""
    try:
        result = await ask_master(cluster.config(timeout=5.0), "osd_ls")
    except (StoreError, OSError):
        return None
    return {int(o["id"]): o for o in result["osds"]}


def all_clean(summary: dict[str, Any] | None) -> bool:
    if summary is None:
        return False
    pgs = summary["pgs"]
    return bool(pgs["total"]) and pgs["states"] == {"active+clean": pgs["total"]}


def healthy(summary: dict[str, Any] | None) -> bool:
    return all_clean(summary) and summary is not None and summary["health"] == "HEALTH_OK"


async def wait_for(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float, every: float = 0.5
) -> None:
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(every)
        return
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def wait_status(
    cluster: Cluster, good: Callable[[dict[str, Any]], bool], what: str, timeout: float
) -> dict[str, Any]:
    """Wait until the cluster's status is `good`; that status. A timeout says the last."""
    last: dict[str, Any] | None = None

    async def check() -> bool:
        nonlocal last
        last = await status(cluster)
        return good(last)

    try:
        await wait_for(check, what, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status: {last}") from None
    assert last is not None
    return last


async def wait_clean(cluster: Cluster, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until every PG is active+clean; the status that said so."""
    return await wait_status(cluster, all_clean, "all PGs active+clean", timeout)


async def wait_healthy(cluster: Cluster, timeout: float = 90.0) -> None:
    """Wait until the cluster is HEALTH_OK with every PG active+clean, then check that
    `store status` (the command an operator runs) says so with exit code 0."""
    await wait_status(cluster, healthy, "HEALTH_OK with all PGs active+clean", timeout)
    result = await trio.to_thread.run_sync(lambda: cluster.cli("status", check=False))
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


async def wait_osd(
    cluster: Cluster, osd: int, *, up: bool | None = None, in_: bool | None = None, timeout: float
) -> None:
    async def there() -> bool:
        found = await osds(cluster)
        info = (found or {}).get(osd)
        if info is None:
            return False
        return (up is None or bool(info["up"]) == up) and (in_ is None or bool(info["in"]) == in_)

    await wait_for(there, f"osd.{osd} up={up} in={in_}", timeout)


# --- metrics -----------------------------------------------------------------------------


def scrape(cluster: Cluster, name: str) -> str:
    with urllib.request.urlopen(cluster.metrics_url(name), timeout=5) as answer:
        return str(answer.read().decode())


def metric(text: str, family: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text exposition (0 when absent)."""
    total = 0.0
    pattern = re.compile(rf"^{re.escape(family)}(?:_total)?(\{{[^}}]*\}})?\s+(\S+)$", re.M)
    for match in pattern.finditer(text):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


# --- copies on disk ----------------------------------------------------------------------


@dataclass(frozen=True)
class Copy:
    osd: int
    version: Version


def copies_on_disk(cluster: Cluster, osd_ids: list[int], pool_id: int) -> dict[str, list[Copy]]:
    """Every live object of the pool and the daemons whose store holds it, with the
    version each holds, read from the daemons' databases beside them (WAL mode lets a
    reader see the last commit without disturbing the daemon)."""
    found: dict[str, list[Copy]] = {}
    for osd in osd_ids:
        path = cluster.root / f"osd.{osd}" / "store.db"
        if not path.exists():
            continue  # a daemon just started: nothing on disk yet
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            if not db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'objects'"
            ).fetchone():
                continue  # its schema is still being made
            rows = db.execute(
                "SELECT name, epoch, seq FROM objects WHERE pool = ? AND live = 1", (pool_id,)
            ).fetchall()
        finally:
            db.close()
        for name, epoch, seq in rows:
            found.setdefault(name, []).append(Copy(osd, (int(epoch), int(seq))))
    return found


def replica_disagreements(
    cluster: Cluster, m: ClusterMap, pool_id: int, names: Iterable[str]
) -> list[str]:
    """Objects of ``names`` that some member of their acting set lacks or holds at another
    version than the others (what a healed PG must not show, read from the disks)."""
    pool = m.pools[pool_id]
    copies = copies_on_disk(cluster, sorted(i for i, o in m.osds.items() if o.up), pool_id)
    problems: list[str] = []
    for name in sorted(names):
        acting = acting_set(m, pool_id, pg_of(pool, name))
        held = {c.osd: c.version for c in copies.get(name, []) if c.osd in acting}
        if not held:
            continue  # nowhere in its acting set: the read check says whether that is right
        if set(held) != set(acting) or len(set(held.values())) != 1:
            problems.append(
                f"{name} (pg {pool_id}.{pg_of(pool, name):x}, acting {list(acting)}): "
                + ", ".join(f"osd.{o} has {v}" for o, v in sorted(held.items()))
                + "".join(f", osd.{o} has none" for o in acting if o not in held)
            )
    return problems


def pg_position(cluster: Cluster, osd: int, pool_id: int, pg: int, *, running: bool) -> Version:
    """The newest version of a PG in a daemon's store. A running daemon's store is read
    beside it (and may lag its very last commit); a stopped one's is opened as the daemon
    would open it, so that its last commits are seen."""
    path = cluster.root / f"osd.{osd}" / "store.db"
    db = (
        sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        if running
        else sqlite3.connect(path, timeout=10)
    )
    try:
        row = db.execute(
            "SELECT epoch, seq FROM pgs WHERE pool = ? AND pg = ?", (pool_id, pg)
        ).fetchone()
    finally:
        db.close()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def pg_log_names(
    cluster: Cluster, osd: int, pool_id: int, pg: int, where: str, *args: int
) -> set[str]:
    """Names in a running daemon's log of a PG, of the entries ``where`` selects."""
    path = cluster.root / f"osd.{osd}" / "store.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            f"SELECT name FROM pglog WHERE pool = ? AND pg = ? AND {where}", (pool_id, pg, *args)
        ).fetchall()
    finally:
        db.close()
    return {str(name) for (name,) in rows}
