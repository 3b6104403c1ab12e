"""Writes larger than one datagram: staged with the primary, committed as one write."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from store.client import api
from store.client.api import STAGE_EXTENT, Client
from store.errors import Code, RemoteError
from store.osd.objectstore import ObjectStore
from store.placement import pg_of, placement, primary
from store.wire.stages import stage_piece
from tests.cluster.harness import Cluster


def versions_on_members(cluster: Cluster, client: Client, name: str) -> dict[int, object]:
    pool = client.pool("default")
    found = {}
    for osd_id in placement(client.map, pool.id, pg_of(pool, name)):
        store = ObjectStore(str(cluster.root / f"osd.{osd_id}"))
        try:
            meta = store.stat(pool.id, name)
            found[osd_id] = None if meta is None else (meta.size, meta.version)
        finally:
            store.close()
    return found


async def test_each_extent_is_one_replicated_write(cluster: Cluster) -> None:
    data = os.urandom(2 * STAGE_EXTENT + 12345)
    async with Client.connect(cluster.config()) as client:
        await client.write_full("default", "big", b"small")
        start = (await client.stat("default", "big")).version
        await client.write_full("default", "big", data)
        assert await client.read("default", "big") == data
        first = (await client.stat("default", "big")).version
        await client.write("default", "big", data[:300_000], 5000)  # one staged extent
        patched = data[:5000] + data[:300_000] + data[305_000:]
        assert await client.read("default", "big") == patched
        second = (await client.stat("default", "big")).version
    # Three extents were three log entries, the patch one more: not one per datagram.
    assert first[1] == start[1] + 3
    assert second[1] == first[1] + 1
    copies = versions_on_members(cluster, client, "big")
    assert len(copies) == 3 and set(copies.values()) == {(len(patched), second)}


async def test_a_commit_needs_its_own_complete_stage(cluster: Cluster) -> None:
    other = cluster.add_client("other", ["default=rw"])
    reader = cluster.add_client("reader", ["default=r"])
    async with Client.connect(cluster.config()) as client:
        spec = client.pool("default")
        pg = pg_of(spec, "obj")
        await client._stage(spec, pg, [stage_piece(11, 0, 8192, spec.id, pg, b"a" * 4096)])
        with pytest.raises(RemoteError) as short:
            await client.execute("default", "obj", [["staged", 11, 0, 8192, False]])
        assert short.value.code == Code.ENOTSTAGED
        with pytest.raises(RemoteError) as other_size:
            await client.execute("default", "obj", [["staged", 11, 0, 4096, False]])
        assert other_size.value.code == Code.EINVAL
        with pytest.raises(RemoteError) as overlap:
            piece = stage_piece(11, 2048, 8192, spec.id, pg, b"c" * 4096)
            await client._stage(spec, pg, [piece])
        assert overlap.value.code == Code.EINVAL
        await client._stage(spec, pg, [stage_piece(11, 4096, 8192, spec.id, pg, b"b" * 4096)])
        with pytest.raises(RemoteError) as unknown:
            await client.execute("default", "obj", [["staged", 12, 0, 4096, False]])
        assert unknown.value.code == Code.ENOTSTAGED
        async with Client.connect(cluster.config(keyring=str(other))) as intruder:
            with pytest.raises(RemoteError) as foreign:
                await intruder.execute("default", "obj", [["staged", 11, 0, 8192, False]])
            assert foreign.value.code == Code.ENOTSTAGED
        async with Client.connect(cluster.config(keyring=str(reader))) as viewer:
            with pytest.raises(RemoteError) as refused:
                await viewer._stage(spec, pg, [stage_piece(1, 0, 1, spec.id, pg, b"x")])
            assert refused.value.code == Code.EPERM
        with pytest.raises(RemoteError) as absent:
            await client.stat("default", "obj")
        assert absent.value.code == Code.ENOENT
        # The stage is still there for its owner, with an extra attribute in the same write.
        await client.execute(
            "default", "obj", [["staged", 11, 0, 8192, True], ["setxattr", "k", b"v"]]
        )
        assert await client.read("default", "obj") == b"a" * 4096 + b"b" * 4096
        assert await client.getxattrs("default", "obj") == {"k": b"v"}


async def test_a_stage_lost_with_a_restarted_primary_is_staged_again(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 << 20)
    async with Client.connect(cluster.config()) as client:
        spec = client.pool("default")
        target = primary(client.map, spec.id, pg_of(spec, "moved"))
        commits: list[int] = []
        real_execute = Client.execute

        async def execute(self: Client, pool: str, name: str, ops: list, *a, **kw):  # type: ignore[no-untyped-def]
            if ops[0][0] == "staged":
                commits.append(ops[0][1])
                if len(commits) == 1:
                    # Between staging and commit the primary dies and comes back empty-handed.
                    await trio.to_thread.run_sync(cluster.kill, f"osd.{target}", signal.SIGKILL)
                    cluster.start_osd(target)
            return await real_execute(self, pool, name, ops, *a, **kw)

        monkeypatch.setattr(Client, "execute", execute)
        monkeypatch.setattr(api, "STAGE_ATTEMPTS", 10)
        await client.write_full("default", "moved", data)
        monkeypatch.undo()
        assert len(commits) >= 2 and len(set(commits)) == len(commits)  # new token each time
        assert await client.read("default", "moved") == data


async def test_pieces_waiting_together_are_acknowledged_together(cluster: Cluster) -> None:
    pieces_data = [bytes([i]) * 1000 for i in range(40)]
    async with Client.connect(cluster.config()) as client:
        spec = client.pool("default")
        pg = pg_of(spec, "together")
        await client.write_full("default", "together", b"first")  # the session is open
        stage = [
            stage_piece(31, i * 1000, 40_000, spec.id, pg, data)
            for i, data in enumerate(pieces_data)
        ]
        frozen = cluster.procs[f"osd.{primary(client.map, spec.id, pg)}"].pid
        received = client.transport.stats.datagrams_received
        os.killpg(frozen, signal.SIGSTOP)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._stage, spec, pg, stage)
                await trio.sleep(0.3)  # every piece (and resends) waits on the socket
                os.killpg(frozen, signal.SIGCONT)
        finally:
            os.killpg(frozen, signal.SIGCONT)
        # One answer for the pieces read in one go (a few if resends came apart), not 40.
        assert client.transport.stats.datagrams_received - received <= 4
        await client.execute("default", "together", [["staged", 31, 0, 40_000, True]])
        assert await client.read("default", "together") == b"".join(pieces_data)
