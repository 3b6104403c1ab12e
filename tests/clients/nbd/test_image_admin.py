"""`store image ...` and the image API against a real cluster."""

from __future__ import annotations

import json
import random

import pytest
import trio

from store.client.api import Client
from store.errors import Code, RemoteError
from store.image import admin
from store.image.errors import DamagedHeader, ImageBusy, ImageExists, LockLost
from store.image.header import read_header, update_header
from store.image.io import Image
from store.image.lease import LeaseKeeper
from store.image.model import MiB, data_object, header_object
from tests.clients.nbd.conftest import POOL, image_info, new_image, store
from tests.cluster.harness import Cluster


def names(cluster: Cluster, image_id: str) -> list[str]:
    out = store(cluster, "ls", "--pool", POOL, "--prefix", f"rbd_data.{image_id}.", "--json")
    return [e["name"] for e in json.loads(out.stdout)]


def test_create_ls_info_and_mistakes(nbd_cluster: Cluster) -> None:
    out = store(
        nbd_cluster, "image", "create", f"{POOL}/a1", "--size", "10G", "--object-size", "1M"
    )
    assert b"10 GiB, objects of 1 MiB" in out.stdout
    new_image(nbd_cluster, "a2", "1536M")
    listed = json.loads(store(nbd_cluster, "image", "ls", POOL, "--json").stdout)
    assert {"a1", "a2"} <= set(listed)
    info = image_info(nbd_cluster, f"{POOL}/a1")
    assert (info["size"], info["object_size"], info["objects"]) == (10 << 30, MiB, 10240)
    assert info["lock"] is None and info["removing"] is False
    text = store(nbd_cluster, "image", "info", f"{POOL}/a2").stdout.decode()
    assert "size 1.50 GiB" in text and "not locked" in text

    for args, message in [
        (["create", f"{POOL}/a1", "--size", "1G"], b"already exists"),
        (["create", "nopool/x", "--size", "1G"], b"no pool named 'nopool'"),
        (["create", f"{POOL}/x", "--size", "lots"], b"not a size"),
        (["create", f"{POOL}/x", "--size", "1G", "--object-size", "3M"], b"power of two"),
        (["create", "justaname", "--size", "1G"], b"POOL/NAME"),
        (["info", f"{POOL}/missing"], b"no image rbd/missing"),
        (["rm", f"{POOL}/missing"], b"no image rbd/missing"),
    ]:
        result = store(nbd_cluster, "image", *args, check=False)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)


async def test_resize_shrink_frees_and_growth_reads_zeros(nbd_cluster: Cluster) -> None:
    image = new_image(nbd_cluster, "shrinking", "32M")
    async with Client.connect(nbd_cluster.config()) as client:
        header = await admin.open_header(client, POOL, "shrinking")
        img = Image(client, POOL, header)
        await img.write(0, b"\x01" * (32 * MiB))
    assert len(names(nbd_cluster, header.id)) == 8

    refused = store(nbd_cluster, "image", "resize", image, "--size", "10M", check=False)
    assert refused.returncode != 0 and b"--allow-shrink" in refused.stderr
    store(nbd_cluster, "image", "resize", image, "--size", "10M", "--allow-shrink")
    assert names(nbd_cluster, header.id) == [data_object(header.id, i) for i in range(3)]
    store(nbd_cluster, "image", "resize", image, "--size", "32M")
    assert image_info(nbd_cluster, image)["size"] == 32 * MiB

    async with Client.connect(nbd_cluster.config()) as client:
        header = await admin.open_header(client, POOL, "shrinking")
        data = await Image(client, POOL, header).read(0, 32 * MiB)
    assert data == b"\x01" * (10 * MiB) + bytes(22 * MiB)


async def test_rm_frees_every_object_and_refuses_a_live_lock(nbd_cluster: Cluster) -> None:
    image = new_image(nbd_cluster, "doomed", "64M")
    async with Client.connect(nbd_cluster.config()) as client:
        header = await admin.open_header(client, POOL, "doomed")
        keeper = LeaseKeeper(client, POOL, header.id, image, owner="test writer", lease=30)
        await keeper.acquire()
        img = Image(client, POOL, header)
        for offset in (0, 17 * MiB, 63 * MiB):
            await img.write(offset, b"x" * 4096)
        refused = store(nbd_cluster, "image", "rm", image, check=False)
        assert refused.returncode != 0 and b"in use by test writer" in refused.stderr
        await keeper.release()
    assert len(names(nbd_cluster, header.id)) == 3
    store(nbd_cluster, "image", "rm", image)
    assert names(nbd_cluster, header.id) == []
    assert "doomed" not in json.loads(store(nbd_cluster, "image", "ls", POOL, "--json").stdout)
    async with Client.connect(nbd_cluster.config()) as client:
        with pytest.raises(RemoteError) as err:
            await client.stat(POOL, header_object(header.id))
        assert err.value.code == Code.ENOENT


async def test_concurrent_creates_and_locks_have_one_winner(nbd_cluster: Cluster) -> None:
    async with Client.connect(nbd_cluster.config()) as client:
        outcomes: list[str] = []

        async def create() -> None:
            try:
                await admin.create_image(client, POOL, "raced", 8 * MiB)
                outcomes.append("created")
            except ImageExists:
                outcomes.append("exists")

        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(create)
        assert sorted(outcomes) == ["created"] + ["exists"] * 5
        assert (await admin.list_images(client, POOL)).count("raced") == 1

        header = await admin.open_header(client, POOL, "raced")
        keepers = [
            LeaseKeeper(client, POOL, header.id, "rbd/raced", owner=f"w{i}", lease=30)
            for i in range(5)
        ]
        won: list[LeaseKeeper] = []

        async def take(keeper: LeaseKeeper) -> None:
            try:
                await keeper.acquire()
                won.append(keeper)
            except ImageBusy:
                pass

        async with trio.open_nursery() as nursery:
            for keeper in keepers:
                nursery.start_soon(take, keeper)
        assert len(won) == 1
        current, _ = await read_header(client, POOL, header.id, "rbd/raced")
        assert current.lock is not None and current.lock.holder == won[0].holder

        # Broken by an operator: the next renewal says so, and writes are refused.
        await admin.unlock_image(client, POOL, "raced", force=True)
        with pytest.raises(LockLost):
            await won[0].renew()
        with pytest.raises(LockLost):
            won[0].check()


async def test_image_io_matches_a_model(nbd_cluster: Cluster) -> None:
    """Random writes, zeroes and trims of a small-object image, against a bytearray."""
    store(nbd_cluster, "image", "create", f"{POOL}/model", "--size", "3M", "--object-size", "64K")
    rng = random.Random(5)
    size = 3 * MiB
    model = bytearray(size)
    async with Client.connect(nbd_cluster.config()) as client:
        header = await admin.open_header(client, POOL, "model")
        img = Image(client, POOL, header, cache_for=None)
        for step in range(60):
            offset = rng.randrange(size)
            length = rng.randrange(1, min(size - offset, 300_000) + 1)
            kind = rng.choice(["write", "write", "zero", "trim"])
            if kind == "write":
                data = rng.randbytes(length)
                await img.write(offset, data)
                model[offset : offset + length] = data
            else:
                await img.zero(offset, length, may_trim=kind == "trim")
                model[offset : offset + length] = bytes(length)
            if step % 10 == 9:
                await img.flush()
                assert await img.read(0, size) == model
        # A fresh image object (nothing cached) reads the same, and its extents agree.
        fresh = Image(client, POOL, header)
        assert await fresh.read(0, size) == model
        position = 0
        while position < size:
            found = await fresh.extents(position, size - position)
            assert found and found[0].offset == position
            for extent in found:
                if extent.hole:
                    assert model[extent.offset : extent.end] == bytes(extent.length)
                position = extent.end


async def test_damaged_header_is_reported_not_overwritten(nbd_cluster: Cluster) -> None:
    new_image(nbd_cluster, "damaged", "8M")
    info = image_info(nbd_cluster, f"{POOL}/damaged")
    name = header_object(str(info["id"]))
    async with Client.connect(nbd_cluster.config()) as client:
        await client.write_full(POOL, name, b"\xc1garbage")
        refused = store(nbd_cluster, "image", "info", f"{POOL}/damaged", check=False)
        assert b"header of image rbd/damaged is damaged" in refused.stderr
        with pytest.raises(DamagedHeader, match="damaged"):
            await update_header(client, POOL, str(info["id"]), "rbd/damaged", lambda h: h)
        assert await client.read(POOL, name) == b"\xc1garbage"


async def test_reads_racing_writes_never_hide_a_write(nbd_cluster: Cluster) -> None:
    new_image(nbd_cluster, "racing", "32M")
    async with Client.connect(nbd_cluster.config()) as client:
        header = await admin.open_header(client, POOL, "racing")
        img = Image(client, POOL, header, cache_for=None)
        for index in range(8):
            offset = index * header.object_size + 4096 * index
            async with trio.open_nursery() as nursery:
                nursery.start_soon(img.read, offset, 8192)
                nursery.start_soon(img.write, offset, bytes([index + 1]) * 8192)
                nursery.start_soon(img.extents, offset, 8192)
            assert await img.read(offset, 8192) == bytes([index + 1]) * 8192
            assert not (await img.extents(offset, 8192))[0].hole
