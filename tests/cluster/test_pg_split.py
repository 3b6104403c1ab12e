"""Growing a pool's pg_num splits its PGs; every object stays readable and in place."""

from __future__ import annotations

import random

import trio

from store.client.api import Client
from store.osd.objectstore import ObjectStore
from store.placement import pg_of, placement
from tests.cluster.conftest import ClusterFactory


async def test_growing_pg_num_keeps_every_object(cluster_factory: ClusterFactory) -> None:
    # Four daemons, two copies: child PGs land on other daemons than their parents.
    cluster = cluster_factory(4, pool_size=2, pg_num=8)
    rng = random.Random(5)
    blobs = {f"split-{i}": rng.randbytes(rng.randrange(0, 150_000)) for i in range(120)}
    async with Client.connect(cluster.config()) as client:
        for name, data in blobs.items():
            await client.write_full("default", name, data)
    cluster.cli("pool", "set", "default", "pg_num", "32")
    await trio.to_thread.run_sync(cluster.wait_healthy)
    async with Client.connect(cluster.config()) as client:
        pool = client.pool("default")
        assert pool.pg_num == 32
        for name, data in blobs.items():
            assert await client.read("default", name) == data, name
        assert dict(await client.ls("default")) == {n: len(d) for n, d in blobs.items()}
        # Writes keep working in the new PGs.
        await client.write_full("default", "after-split", b"new")
        assert await client.read("default", "after-split") == b"new"
        m = client.map
    stores = {i: ObjectStore(str(cluster.root / f"osd.{i}")) for i in m.osds}
    try:
        for name in blobs:
            for osd_id in placement(m, pool.id, pg_of(pool, name)):
                assert stores[osd_id].stat(pool.id, name) is not None, (name, osd_id)
    finally:
        for store in stores.values():
            store.close()
