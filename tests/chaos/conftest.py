"""Small real clusters for failure scenarios: fast heartbeats, a short grace, and daemons
that restart with the flags they were first given."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pytest

from tests.cluster.harness import Cluster

GRACE = 2.5  # seconds without heartbeat before the master marks a daemon down
HEARTBEAT = 0.5


class ChaosCluster(Cluster):
    """A cluster whose daemons always start with the same extra flags (and metrics), so
    a test restarts a killed daemon with ``start_osd(i)`` alone."""

    def __init__(
        self, root: Path, *, osd_extra: Sequence[str], osd_metrics: bool, **kwargs: float
    ) -> None:
        super().__init__(root, **kwargs)
        self.osd_extra = list(osd_extra)
        self.osd_metrics = osd_metrics

    def start_osd(
        self,
        i: int,
        *,
        host: str | None = None,
        extra: list[str] | None = None,
        metrics: bool = False,
    ) -> None:
        super().start_osd(
            i,
            host=host,
            extra=[*self.osd_extra, *(extra or [])],
            metrics=metrics or self.osd_metrics,
        )

    def add_osd(self, i: int) -> None:
        self.start_osd(i)
        self.wait_registered(i)


class ChaosFactory(Protocol):
    def __call__(
        self,
        osds: int = 3,
        *,
        size: int = 3,
        min_size: int = 2,
        pg_num: int = 8,
        osd_extra: Sequence[str] = (),
        master_extra: Sequence[str] = (),
        metrics: bool = False,
    ) -> ChaosCluster: ...


@pytest.fixture
def chaos_cluster(tmp_path: Path) -> Iterator[ChaosFactory]:
    """Start a cluster with one pool, ``default``; every process is killed at the end."""
    made: list[ChaosCluster] = []

    def make(
        osds: int = 3,
        *,
        size: int = 3,
        min_size: int = 2,
        pg_num: int = 8,
        osd_extra: Sequence[str] = (),
        master_extra: Sequence[str] = (),
        metrics: bool = False,
    ) -> ChaosCluster:
        cluster = ChaosCluster(
            tmp_path / f"c{len(made)}",
            osd_extra=osd_extra,
            osd_metrics=metrics,
            grace=GRACE,
            heartbeat=HEARTBEAT,
        )
        made.append(cluster)
        cluster.master_extra = list(master_extra)
        cluster.start_master()
        for i in range(osds):
            cluster.add_osd(i)
        cluster.cli(
            "pool",
            "create",
            "default",
            "--size",
            str(size),
            "--min-size",
            str(min_size),
            "--pg-num",
            str(pg_num),
        )
        cluster.wait_healthy()
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.stop()
