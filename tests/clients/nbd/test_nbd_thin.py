"""Thin provisioning: only written objects exist, extents show holes, trim frees objects."""

from __future__ import annotations

import json

from store.image.model import data_object
from tests.clients.nbd.conftest import POOL, Serve, image_info, new_image, run, store
from tests.cluster.harness import Cluster

GiB, MiB = 1 << 30, 1 << 20


def data_objects(cluster: Cluster, image_id: str) -> dict[str, int]:
    out = store(cluster, "ls", "--pool", POOL, "--prefix", f"rbd_data.{image_id}.", "--json")
    return {e["name"]: e["size"] for e in json.loads(out.stdout)}


def extent_map(uri: str) -> list[tuple[int, int, bool]]:
    """(offset, length, hole) from `nbdinfo --map`, neighbours of a kind merged."""
    merged: list[tuple[int, int, bool]] = []
    for e in json.loads(run("nbdinfo", "--map", "--json", uri).stdout):
        hole = bool(e["type"] & 1)
        if merged and merged[-1][2] == hole and merged[-1][0] + merged[-1][1] == e["offset"]:
            offset, length, _ = merged.pop()
            merged.append((offset, length + e["length"], hole))
        else:
            merged.append((e["offset"], e["length"], hole))
    return merged


def test_thin_provisioning_extents_and_trim(nbd_cluster: Cluster, serve: Serve) -> None:
    image = new_image(nbd_cluster, "thin", "10G")
    image_id = str(image_info(nbd_cluster, image)["id"])
    assert data_objects(nbd_cluster, image_id) == {}
    assert image_info(nbd_cluster, image, "--usage")["used_objects"] == 0

    server = serve(image)
    assert extent_map(server.uri) == [(0, 10 * GiB, True)]
    run("qemu-io", "-f", "raw", "-c", "write -P 0xcd 5G 1M", server.uri)
    # 5 GiB / 4 MiB = object 1280; it holds the 1 MiB written and nothing past it.
    assert data_objects(nbd_cluster, image_id) == {data_object(image_id, 1280): MiB}
    assert extent_map(server.uri) == [
        (0, 5 * GiB, True),
        (5 * GiB, MiB, False),
        (5 * GiB + MiB, 5 * GiB - MiB, True),
    ]
    # A copy skips the holes: a sparse file of 10 GiB with the 1 MiB in place.
    run("qemu-io", "-f", "raw", "-c", "read -P 0xcd 5G 1M", "-c", "read -P 0 5121M 3M", server.uri)

    # Trimming part of an object keeps it; trimming all of it deletes it.
    run("qemu-io", "-f", "raw", "-c", "discard 5G 512k", "-c", "read -P 0 5G 512k",
        "-c", "read -P 0xcd 5243392k 512k", server.uri)  # fmt: skip
    assert list(data_objects(nbd_cluster, image_id)) == [data_object(image_id, 1280)]
    run("qemu-io", "-f", "raw", "-c", "discard 5G 4M", server.uri)
    assert data_objects(nbd_cluster, image_id) == {}
    assert extent_map(server.uri) == [(0, 10 * GiB, True)]
    run("qemu-io", "-f", "raw", "-c", "read -P 0 5G 4M", server.uri)


def test_write_zeroes_without_trim_allocates(nbd_cluster: Cluster, serve: Serve) -> None:
    image = new_image(nbd_cluster, "zeroes", "64M")
    image_id = str(image_info(nbd_cluster, image)["id"])
    server = serve(image)
    # No hole punching allowed: the zeroed object exists (sparse) and reads as zeros.
    run("qemu-io", "-f", "raw", "-c", "write -z 8M 4M", "-c", "read -P 0 8M 4M", server.uri)
    assert data_objects(nbd_cluster, image_id) == {data_object(image_id, 2): 4 * MiB}
    # Hole punching allowed: the object goes.
    run("qemu-io", "-f", "raw", "-c", "write -z -u 8M 4M", server.uri)
    assert data_objects(nbd_cluster, image_id) == {}
