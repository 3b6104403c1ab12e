"""A long run of mixed I/O while a random daemon is killed -9 and restarted every minute.

Not part of the regular suite: run it with

    STORE_SOAK_MINUTES=5 .venv/bin/pytest tests/chaos/test_soak.py -m slow -s

(30 minutes by default). It passes when no read, during the run or at the end, returned
anything but an acknowledged (or still unanswered) write, and the cluster heals at the end.
"""

from __future__ import annotations

import os
import random

import pytest
import trio

from store.client.api import Client
from tests.chaos.checks import CLIENT_TIMEOUT, POOL, check_healed, kill
from tests.chaos.conftest import ChaosFactory
from tests.chaos.ledger import Ledger
from tests.chaos.writer import Writer

DAEMONS = 4
PERIOD = 60.0  # seconds between kills


@pytest.mark.slow
async def test_soak_with_a_daemon_killed_every_minute(chaos_cluster: ChaosFactory) -> None:
    minutes = float(os.environ.get("STORE_SOAK_MINUTES", "30"))
    seed = int(os.environ.get("STORE_SOAK_SEED", "0"))
    rng = random.Random(seed)
    cluster = chaos_cluster(DAEMONS, size=3, min_size=2, pg_num=16)
    kills: list[str] = []
    async with Client.connect(cluster.config(timeout=CLIENT_TIMEOUT)) as client:
        ledger = Ledger(client.max_piece)
        writer = Writer(
            client, POOL, ledger, prefix="soak", max_objects=4000, read_fraction=0.3, seed=seed
        )
        end = trio.current_time() + minutes * 60
        async with writer.running():
            while trio.current_time() < end:
                started = trio.current_time()
                victim = rng.randrange(DAEMONS)
                await kill(cluster, victim)
                away = min(rng.uniform(5, 30), max(0.0, end - trio.current_time()))
                await trio.sleep(away)
                cluster.start_osd(victim)
                kills.append(f"osd.{victim} for {away:.0f} s")
                await trio.sleep(max(0.0, started + PERIOD - trio.current_time()))
        print(
            f"soak of {minutes:g} min: kills {kills}; writes acknowledged {ledger.acked}, "
            f"unanswered {dict(ledger.unanswered)}; reads {writer.stats.reads} "
            f"{dict(writer.stats.matches)}, unavailable {dict(writer.stats.reads_unavailable)}"
        )
        await check_healed(cluster, client, ledger, writer)
    assert kills and ledger.acked > 0
