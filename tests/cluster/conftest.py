from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[object]:
    made: list[Cluster] = []

    def make(
        osds: int = 3, *, pool_size: int | None = None, pg_num: int = 16, **kwargs: object
    ) -> Cluster:
        c = Cluster(tmp_path / f"c{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(c)
        c.root.mkdir(parents=True, exist_ok=True)
        c.start_master()
        for i in range(osds):
            c.start_osd(i)
            c.wait_registered(i)
        c.cli(
            "pool",
            "create",
            "default",
            "--size",
            str(pool_size or min(3, osds)),
            "--pg-num",
            str(pg_num),
        )
        c.wait_healthy()
        return c

    try:
        yield make
    finally:
        for c in made:
            c.stop()


@pytest.fixture
def cluster(cluster_factory: object) -> Cluster:
    return cluster_factory()  # type: ignore[operator]
