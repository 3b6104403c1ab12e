"""What every scenario checks at its end, and small helpers the scenarios share."""

from __future__ import annotations

import signal

import trio

from store.client.api import Client
from store.placement import pg_of
from tests.chaos.ledger import Ledger
from tests.chaos.observe import replica_disagreements, wait_healthy
from tests.chaos.writer import Writer, verify
from tests.cluster.harness import Cluster

POOL = "default"
# Short, so that requests caught by a failure (a primary killed under them waits out the
# whole deadline) give up soon and the writer goes on.
CLIENT_TIMEOUT = 6.0


async def healing_problems(
    cluster: Cluster, client: Client, ledger: Ledger, writer: Writer | None = None
) -> list[str]:
    """What keeps the cluster from being healed, and its data right: the cluster must come
    back on its own (HEALTH_OK, every PG active+clean), every acknowledged write read back,
    every member of each acting set hold every object at the same version, and no read
    during the run have been wrong. Empty when all is well."""
    try:
        await wait_healthy(cluster)
    except AssertionError as exc:
        return [f"never healed: {exc}"]
    report = await verify(client, POOL, ledger)
    problems = [report.summary()] if report.problems else []
    if writer is not None and writer.stats.wrong_reads:
        problems.append("wrong reads during the run:")
        problems += writer.stats.wrong_reads[:40]
    disagreements = await trio.to_thread.run_sync(
        replica_disagreements, cluster, client.map, client.pool(POOL).id, ledger.names()
    )
    if disagreements:
        problems.append("copies that differ within an acting set:")
        problems += disagreements[:40]
    return problems


async def check_healed(
    cluster: Cluster, client: Client, ledger: Ledger, writer: Writer | None = None
) -> None:
    problems = await healing_problems(cluster, client, ledger, writer)
    assert not problems, "\n".join(problems)


def names_per_pg(client: Client, prefix: str, per_pg: int) -> list[str]:
    """``per_pg`` object names in each PG of the pool (so that every PG takes writes)."""
    pool = client.pool(POOL)
    chosen: dict[int, list[str]] = {pg: [] for pg in range(pool.pg_num)}
    i = 0
    while any(len(names) < per_pg for names in chosen.values()):
        name = f"{prefix}-{i:05d}"
        if len(chosen[pg_of(pool, name)]) < per_pg:
            chosen[pg_of(pool, name)].append(name)
        i += 1
    return sorted(n for names in chosen.values() for n in names)


async def kill(cluster: Cluster, osd: int) -> None:
    """kill -9 a daemon (its whole process group), from a thread: the writer goes on."""
    await trio.to_thread.run_sync(cluster.kill, f"osd.{osd}", signal.SIGKILL)
