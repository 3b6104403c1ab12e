"""kill -9 of a PG's primary in the middle of a stream of writes to that PG.

The primary forwards a write while it writes it to its own disk: killed, it may hold on
disk writes no one acknowledged and its replicas have not written yet (they are in their
sockets, and the replicas write them after the kill) or, rarely, never received (still
queued in the dead primary), while the next primary numbers its own writes from the same
point. When the old primary returns it leads the PG again (it is first in the placement),
so every read afterwards is served by it: whatever it kept or took must be the
acknowledged history. The power cut below makes the second case certain. The last test is the client's side of the same event: a write
sent to a primary that has just died.
"""

from __future__ import annotations

import os
import signal

import trio

from store.client.api import Client
from store.errors import ClientTimeout
from store.placement import pg_of
from tests.chaos.checks import CLIENT_TIMEOUT, POOL, healing_problems, kill
from tests.chaos.conftest import GRACE, ChaosCluster, ChaosFactory
from tests.chaos.ledger import Ledger, content
from tests.chaos.observe import pg_log_names, pg_position, wait_osd
from tests.chaos.writer import Writer

PG = 5  # the PG written to (any would do)


def names_in_pg(client: Client, pg: int, count: int) -> list[str]:
    pool = client.pool(POOL)
    names: list[str] = []
    i = 0
    while len(names) < count:
        name = f"pg{pg}-{i:05d}"
        if pg_of(pool, name) == pg:
            names.append(name)
        i += 1
    return names


KILLS = 3
AHEAD_BY = 3  # seqs the primary must have that neither replica shows, to be killed


def test_the_primary_killed_under_a_stream_of_writes(chaos_cluster: ChaosFactory) -> None:
    """The primary is killed (and restarted) KILLS times, each at a moment its disk holds
    writes its replicas' disks do not show yet. Everything must heal to the acknowledged
    history, on every copy; a kill that left it with writes they never received (the next
    primary then numbered other writes with the same seqs) is reported, not required: with
    writes forwarded before the primary's own flush it has become rare (the power cut test
    below makes it certain).

    Run by trio.run here rather than as a trio test, so that a wrong result fails as a
    plain AssertionError."""
    cluster = chaos_cluster(3, size=3, min_size=2, pg_num=8)
    problems, leader, victim = trio.run(_primary_killed_under_writes, cluster)
    assert not problems, "\n".join(problems)
    assert leader == victim  # it leads the PG again, and served every read since


async def _primary_killed_under_writes(cluster: ChaosCluster) -> tuple[list[str], int, int]:
    # Writes sent to the dead primary wait out the deadline (see the test below): a short
    # one keeps each round short.
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT / 2)) as client:
        pool_id = client.pool(POOL).id
        names = names_in_pg(client, PG, 20000)
        victim = client.locate(POOL, names[0])["primary"]
        assert victim is not None
        replicas = [osd for osd in range(3) if osd != victim]
        ledger = Ledger(client.max_piece)
        # Many writers on one PG, so that the primary always has writes applied and not
        # yet on its replicas; each write makes a new object, so that no later write
        # hides one the returning primary failed to take.
        writer = Writer(
            client,
            POOL,
            ledger,
            names=names,
            max_objects=len(names),
            new_fraction=1.0,
            workers=16,
            seed=5,
        )
        async with writer.running():
            await writer.wait_acked(40)
            diverged = 0
            for _ in range(KILLS):
                await kill_when_ahead(cluster, victim, replicas, pool_id)
                at_death = pg_position(cluster, victim, pool_id, PG, running=False)
                await wait_osd(cluster, victim, up=False, timeout=15)
                await writer.wait_acked(30)  # a new primary took the PG
                # Entries the new primary numbered with seqs under which the dead one
                # holds writes of its own, which no other daemon has.
                renumbered = await trio.to_thread.run_sync(
                    pg_log_names,
                    cluster,
                    replicas[0],
                    pool_id,
                    PG,
                    "seq <= ? AND epoch > ?",
                    at_death[1],
                    at_death[0],
                )
                cluster.start_osd(victim)
                await wait_osd(cluster, victim, up=True, timeout=15)
                await writer.wait_acked(30)
                diverged += bool(renumbered)
            print(f"{diverged} of {KILLS} kills left the primary with writes no one else had")
        problems = await healing_problems(cluster, client, ledger, writer)
        return problems, client.locate(POOL, names[0])["primary"], victim


async def kill_when_ahead(
    cluster: ChaosCluster, victim: int, replicas: list[int], pool_id: int
) -> None:
    """kill -9 the primary at a moment its store shows AHEAD_BY more writes than either
    replica's."""

    def ahead() -> bool:
        mine = pg_position(cluster, victim, pool_id, PG, running=True)[1]
        theirs = max(pg_position(cluster, r, pool_id, PG, running=True)[1] for r in replicas)
        return mine >= theirs + AHEAD_BY

    with trio.fail_after(30):
        while not await trio.to_thread.run_sync(ahead):
            await trio.sleep(0.005)
    await kill(cluster, victim)


def test_a_primary_ahead_of_its_replicas_returns_after_them(chaos_cluster: ChaosFactory) -> None:
    """The same failure with the whole PG down at once: the replicas are frozen (SIGSTOP)
    while the primary applies writes, then all three are killed -9, as by a power cut —
    the primary holds writes its replicas never received. The replicas come back first and
    go on writing from their own position; then the old primary returns and leads the PG
    again.

    Run by trio.run here rather than as a trio test, so that a wrong result fails as a
    plain AssertionError."""
    cluster = chaos_cluster(3, size=3, min_size=2, pg_num=8)
    problems, leader, victim = trio.run(_primary_ahead_of_its_replicas, cluster)
    assert not problems, "\n".join(problems)
    assert leader == victim


async def _primary_ahead_of_its_replicas(cluster: ChaosCluster) -> tuple[list[str], int, int]:
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        pool_id = client.pool(POOL).id
        names = names_in_pg(client, PG, 3000)
        victim = client.locate(POOL, names[0])["primary"]
        assert victim is not None
        replicas = [osd for osd in range(3) if osd != victim]
        ledger = Ledger(client.max_piece)
        writer = Writer(client, POOL, ledger, names=names, new_fraction=1.0, workers=12, seed=6)
        async with writer.running():
            await writer.wait_acked(30)
            for osd in replicas:
                os.killpg(cluster.procs[f"osd.{osd}"].pid, signal.SIGSTOP)
            # The primary goes on applying what arrives; its forwards reach no one.
            await trio.sleep(0.3)
            for osd in (victim, *replicas):  # SIGKILL ends stopped processes too
                await kill(cluster, osd)
            at_death = {
                osd: pg_position(cluster, osd, pool_id, PG, running=False) for osd in range(3)
            }
            if not all(at_death[victim] > at_death[osd] for osd in replicas):
                raise RuntimeError(f"the primary did not get ahead of its replicas: {at_death}")
            for osd in replicas:
                cluster.start_osd(osd)
            await wait_osd(cluster, victim, up=False, timeout=15)
            await writer.wait_acked(30)  # numbered from the replicas' position
            cluster.start_osd(victim)
            await wait_osd(cluster, victim, up=True, timeout=15)
            await writer.wait_acked(20)
        problems = await healing_problems(cluster, client, ledger, writer)
        return problems, client.locate(POOL, names[0])["primary"], victim


def test_a_write_sent_to_a_dead_primary_follows_the_new_map(
    chaos_cluster: ChaosFactory,
) -> None:
    """A write sent just after its primary died: the map names a new primary a grace
    period later, well inside the client's deadline, so the write must succeed there."""
    cluster = chaos_cluster(3, size=3, min_size=2, pg_num=8)
    failure = trio.run(_write_to_a_dead_primary, cluster)
    assert failure is None, failure


async def _write_to_a_dead_primary(cluster: ChaosCluster) -> str | None:
    # Failing over takes the master's grace (GRACE) and a moment of peering; the deadline
    # leaves several times that.
    async with Client.connect(cluster.config(timeout=4 * GRACE)) as client:
        name = names_in_pg(client, PG, 1)[0]
        victim = client.locate(POOL, name)["primary"]
        await client.write_full(POOL, name, content(name, 1, 5000))
        await kill(cluster, victim)
        try:
            await client.write_full(POOL, name, content(name, 2, 5000))
        except ClientTimeout as exc:
            now = client.locate(POOL, name)["primary"]
            return f"{exc} (osd.{victim} was killed; the map names osd.{now} now)"
        assert await client.read(POOL, name) == content(name, 2, 5000)
        return None
