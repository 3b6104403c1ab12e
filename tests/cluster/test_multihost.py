"""Three hosts as network namespaces: replicas on three hosts, clients reach each host directly."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.client.api import Client
from store.osd.objectstore import ObjectStore
from store.placement import acting_set, pg_of
from store.rpc import parse_hostport
from tests.cluster.netns import OSD_PORT, NetnsCluster, NetnsLab, require_netns

pytestmark = pytest.mark.netns

PG_NUM = 32


@pytest.fixture
def multihost(tmp_path: Path) -> Iterator[NetnsCluster]:
    require_netns()
    lab = NetnsLab(3)
    cluster: NetnsCluster | None = None
    try:
        lab.create()
        cluster = NetnsCluster(tmp_path / "cluster", lab)
        cluster.start_master()
        for i in range(len(lab.hosts)):
            cluster.start_osd(i)
            try:
                cluster.wait_registered(i)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{cluster.log(f'osd.{i}')[-3000:]}") from None
        cluster.cli("pool", "create", "default", "--size", "3", "--pg-num", str(PG_NUM))
        cluster.wait_healthy()
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        leftovers = lab.destroy()
    assert not leftovers, f"could not remove {leftovers}"


async def test_every_pg_spans_three_hosts(multihost: NetnsCluster) -> None:
    hosts = multihost.lab.hosts
    async with Client.connect(multihost.config()) as client:
        m = client.map
        pool = client.pool("default")
    assert {i: (o.host, o.addr, o.up) for i, o in m.osds.items()} == {
        i: (h.name, f"{h.host_ip}:{OSD_PORT}", True) for i, h in enumerate(hosts)
    }
    assert pool.pg_num == PG_NUM
    for pg in range(pool.pg_num):
        acting = acting_set(m, pool.id, pg)
        assert len(acting) == 3, pg
        assert len({m.osds[o].host for o in acting}) == 3, (pg, acting)
        assert len({parse_hostport(m.osds[o].addr)[0] for o in acting}) == 3, (pg, acting)


async def test_objects_round_trip_through_the_hosts_addresses(multihost: NetnsCluster) -> None:
    rng = random.Random(7)
    blobs = {
        f"mh-{i}": rng.randbytes(rng.choice([0, 1, 4096, rng.randrange(1 << 21)]))
        for i in range(24)
    }
    async with Client.connect(multihost.config()) as client:
        for name, data in blobs.items():
            await client.write_full("default", name, data)
        for name, data in blobs.items():
            got = await client.read("default", name)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), name
        contacted = {link.address for link in client.transport.links.values()}
        pool = client.pool("default")
        m = client.map
    host_addresses = {(h.host_ip, OSD_PORT) for h in multihost.lab.hosts}
    assert contacted and contacted <= host_addresses
    # Every write reached the other two hosts through the root namespace's routing.
    for osd_id in m.osds:
        store = ObjectStore(str(multihost.root / f"osd.{osd_id}"))
        try:
            for name, data in blobs.items():
                assert osd_id in acting_set(m, pool.id, pg_of(pool, name))
                state = store.object_state(pool.id, name)
                assert state.exists, (osd_id, name)
                assert state.data == data, (osd_id, name)
        finally:
            store.close()
