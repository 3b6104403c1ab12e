from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster

ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start clusters (master + daemons as processes); all of them are killed at the end."""
    made: list[Cluster] = []

    def make(
        osds: int = 3,
        *,
        pool_size: int | None = None,
        pg_num: int = 16,
        master_extra: list[str] | None = None,
        **kwargs: float,
    ) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", **kwargs)
        made.append(c)
        c.master_extra = master_extra or []
        c.start_master()
        for i in range(osds):
            c.start_osd(i)
            c.wait_registered(i)
        size = pool_size or min(3, osds)
        c.cli("pool", "create", "default", "--size", str(size), "--pg-num", str(pg_num))
        c.wait_healthy()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def cluster(cluster_factory: ClusterFactory) -> Cluster:
    return cluster_factory()
