"""Object I/O against a real three-daemon cluster on loopback."""

from __future__ import annotations

import hashlib
import os
import random
import signal

import pytest
import trio

from store.client.api import Client
from store.errors import ClientTimeout, Code, RemoteError
from store.osd.objectstore import ObjectStore
from store.placement import pg_of, placement
from tests.cluster.harness import Cluster, scheduling_policies

SIZES = [0, 1, 4095, 4096, 4097, 60000, 65536, 1 << 20, (4 << 20) + 123, 64 << 20]


async def test_write_read_delete_of_every_size(cluster: Cluster) -> None:
    rng = random.Random(1)
    async with Client.connect(cluster.config()) as client:
        blobs = {f"obj-{n}": rng.randbytes(n) for n in SIZES}
        for name, data in blobs.items():
            await client.write_full("default", name, data)
        for name, data in blobs.items():
            got = await client.read("default", name)
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), name
            assert (await client.stat("default", name)).size == len(data)
        listed = dict(await client.ls("default"))
        assert listed == {name: len(data) for name, data in blobs.items()}
        await client.delete("default", "obj-4096")
        with pytest.raises(RemoteError) as err:
            await client.read("default", "obj-4096")
        assert err.value.code == Code.ENOENT


async def test_large_reads_come_in_fragments(cluster: Cluster) -> None:
    data = random.Random(3).randbytes(3 << 20)
    async with Client.connect(cluster.config()) as client:
        await client.write_full("default", "fragmented", data)
        assert client.read_slots is not None  # the receive buffer was granted (root)
        stats = client.transport.stats
        requests, received = stats.requests, stats.datagrams_received
        assert await client.read("default", "fragmented", 0, len(data)) == data
        # Three 1 MiB extents, one request each, each answered by seventeen datagrams.
        assert stats.requests - requests == 3
        assert stats.datagrams_received - received >= 3 * 17
        # Without a receive buffer for fragments, reads go as one-datagram pieces.
        client.read_slots = None
        requests = stats.requests
        assert await client.read("default", "fragmented", 0, len(data)) == data
        assert stats.requests - requests == -(-len(data) // client.max_piece)
        client.read_slots = trio.Semaphore(4)
        # A reply that would need more fragments than a reply may have is refused, not
        # dropped: 3 MiB in datagrams of 1400 bytes would be some 2,400.
        client.transport.max_datagram = 1400
        with pytest.raises(RemoteError) as err:
            await client.execute(
                "default", "fragmented", [["read", 0, len(data)]], fragments=len(data) + 4096
            )
        assert err.value.code == Code.EFBIG
        client.transport.max_datagram = 65000
        # A short read past the end still comes back whole, as the object's tail.
        assert await client.read("default", "fragmented", (3 << 20) - 1000, 5 << 20) == data[-1000:]


async def test_a_whole_object_read_never_mixes_versions(cluster: Cluster) -> None:
    # Full writes of 5 MiB of 0x02 and 2 MiB of 0x03 alternate while whole-object reads
    # run: each read must be one of them, whole. (Taking the size from one request and
    # the bytes from later ones gave 2 MiB of 0x02, or a short 0x03 object cut at 5 MiB.)
    shapes = {2: 5 << 20, 3: 2 << 20}
    seen: set[int] = set()
    async with Client.connect(cluster.config()) as client:
        await client.write_full("default", "flipping", bytes([2]) * shapes[2])

        async def writer(cancel: trio.CancelScope) -> None:
            for round_ in range(12):
                gen = 3 if round_ % 2 == 0 else 2
                await client.write_full("default", "flipping", bytes([gen]) * shapes[gen])
            cancel.cancel()

        async def reader() -> None:
            while True:
                data = await client.read("default", "flipping")
                gen = data[0]
                assert len(data) == shapes[gen] and data.count(gen) == len(data), (
                    f"{len(data)} bytes starting with {gen}"
                )
                seen.add(gen)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(reader)
            nursery.start_soon(writer, nursery.cancel_scope)
    assert seen == {2, 3}


async def test_offset_writes_and_ranged_reads(cluster: Cluster) -> None:
    rng = random.Random(2)
    model = bytearray()
    async with Client.connect(cluster.config()) as client:
        for _ in range(25):
            offset = rng.randrange(0, 3 << 20)
            data = rng.randbytes(rng.randrange(1, 300_000))
            await client.write("default", "patched", data, offset)
            if len(model) < offset + len(data):
                model.extend(bytes(offset + len(data) - len(model)))
            model[offset : offset + len(data)] = data
        assert await client.read("default", "patched") == bytes(model)
        for _ in range(10):
            offset = rng.randrange(0, len(model))
            length = rng.randrange(0, 500_000)
            assert await client.read("default", "patched", offset, length) == bytes(
                model[offset : offset + length]
            )


async def test_every_object_is_on_size_daemons(cluster: Cluster) -> None:
    async with Client.connect(cluster.config()) as client:
        names = [f"copy-{i}" for i in range(40)]
        for name in names:
            await client.write_full("default", name, name.encode() * 100)
        pool = client.pool("default")
        m = client.map
    for name in names:
        holders = []
        for osd_id in sorted(m.osds):
            store = ObjectStore(str(cluster.root / f"osd.{osd_id}"))
            try:
                if store.stat(pool.id, name) is not None:
                    holders.append(osd_id)
            finally:
                store.close()
        assert sorted(holders) == sorted(placement(m, pool.id, pg_of(pool, name))), name
        assert len(holders) == 3


async def test_acknowledged_writes_survive_kill_of_a_daemon(cluster: Cluster) -> None:
    acked: dict[str, bytes] = {}
    async with Client.connect(cluster.config()) as client:

        async def writer() -> None:
            i = 0
            while True:
                name, data = f"stream-{i}", os.urandom(random.randrange(1, 200_000))
                try:
                    await client.write_full("default", name, data)
                    acked[name] = data
                except (RemoteError, ClientTimeout):
                    pass
                i += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.sleep(2)
            await trio.to_thread.run_sync(cluster.kill, "osd.1", signal.SIGKILL)
            await trio.sleep(6)  # marked down; writes go on with min_size 2
            cluster.start_osd(1)
            await trio.sleep(4)
            nursery.cancel_scope.cancel()
    assert len(acked) > 20
    await trio.to_thread.run_sync(cluster.wait_healthy)
    async with Client.connect(cluster.config()) as client:
        for name, data in acked.items():
            assert await client.read("default", name) == data, name


def test_daemons_run_every_thread_in_sched_batch(cluster: Cluster) -> None:
    # store.threadsched: a woken thread must not preempt the one holding the GIL.
    daemons = [proc for name, proc in cluster.procs.items() if name.startswith("osd")]
    assert len(daemons) == 3
    for proc in daemons:
        assert scheduling_policies(proc.pid) == {os.SCHED_BATCH}
