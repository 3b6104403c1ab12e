"""A filesystem on an image: mkfs.ext4 through nbdfuse and a loop device, files, fsck."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from tests.clients.nbd.conftest import Serve, loop_device, mounted, new_image, run, tool
from tests.cluster.harness import Cluster


def write_tree(root: Path, seed: int) -> dict[str, str]:
    """A tree of files of many sizes; returns path -> sha256."""
    rng = random.Random(seed)
    sums: dict[str, str] = {}
    for d in range(6):
        folder = root / f"dir{d}" / f"sub{d % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        for f in range(8):
            size = rng.choice([0, 1, 511, 4096, 10_000, 100_000, 1 << 20, 3 << 20])
            data = rng.randbytes(size)
            path = folder / f"file{f}.bin"
            path.write_bytes(data)
            sums[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return sums


def check_tree(root: Path, sums: dict[str, str]) -> None:
    for name, digest in sums.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name


def test_ext4_on_an_image(nbd_cluster: Cluster, serve: Serve, short_dir: Path) -> None:
    for name in ("mkfs.ext4", "e2fsck", "mount", "umount"):
        tool(name)
    image = new_image(nbd_cluster, "ext4", "256M")
    writer = serve(image)
    mountpoint = short_dir / "mnt"
    with loop_device(writer.uri, short_dir) as device:
        run("mkfs.ext4", "-q", "-F", device)
        with mounted(device, mountpoint) as root:
            sums = write_tree(root, seed=7)
        run("e2fsck", "-fn", device)
        with mounted(device, mountpoint) as root:
            check_tree(root, sums)
    writer.stop()

    # The same image from a second nbdkit, read-only: the files are all there.
    reader = serve(image, "--readonly")
    with loop_device(reader.uri, short_dir, readonly=True) as device:
        run("e2fsck", "-fn", device)
        with mounted(device, mountpoint, "ro", "noload") as root:
            check_tree(root, sums)
