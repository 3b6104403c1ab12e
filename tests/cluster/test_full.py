"""A daemon whose disk fills up: writes refused with a clear error, reads and deletes work,
`store status` and `store health detail` say why and what to do, and writes come back once
data is deleted.

Each daemon's directory is a small tmpfs the test mounts (and always unmounts); the
daemons run with a low ``full_ratio`` so that the limit comes long before the filesystem
itself is full.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from store.client.api import Client
from store.errors import Code, RemoteError
from tests.cluster.harness import Cluster, wait_until

POOL = "default"
DISK = "48m"
FULL, NEARFULL = 0.5, 0.3
OBJECT = 512 * 1024


def mount_tmpfs(where: Path) -> None:
    where.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"this test mounts a small tmpfs and needs root: {done.stderr.strip()}")


def unmount(where: Path) -> None:
    if subprocess.run(["mountpoint", "-q", str(where)]).returncode == 0:
        subprocess.run(["umount", str(where)], capture_output=True)
        if subprocess.run(["mountpoint", "-q", str(where)]).returncode == 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def small_cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "c")
    disks = [c.root / f"osd.{i}" for i in range(3)]
    try:
        c.start_master()
        for i, disk in enumerate(disks):
            mount_tmpfs(disk)
            extra = ["--full-ratio", str(FULL), "--nearfull-ratio", str(NEARFULL)]
            c.start_osd(i, extra=extra)
            c.wait_registered(i)
        c.cli("pool", "create", POOL, "--size", "3", "--pg-num", "8")
        c.wait_healthy()
        yield c
    finally:
        c.stop()
        for disk in disks:
            unmount(disk)


def status_text(cluster: Cluster) -> tuple[int, str]:
    result = cluster.cli("status", check=False)
    return result.returncode, result.stdout.decode()


def no_space(exc: BaseException) -> RemoteError | None:
    """The ENOSPC refusal in `exc` (pieces of a large write fail together, in a group)."""
    if isinstance(exc, RemoteError):
        return exc if exc.code == Code.ENOSPC else None
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = no_space(inner)
            if found is not None:
                return found
    return None


async def fill(cluster: Cluster, rng: random.Random) -> tuple[dict[str, bytes], RemoteError]:
    """Write objects until the cluster refuses one; returns what was stored, and the error."""
    stored: dict[str, bytes] = {}
    async with Client.connect(cluster.config()) as client:
        for i in range(200):
            name, data = f"fill-{i}", rng.randbytes(OBJECT)
            try:
                await client.write_full(POOL, name, data)
            except (RemoteError, BaseExceptionGroup) as exc:
                refused = no_space(exc)
                if refused is None:
                    raise
                return stored, refused
            stored[name] = data
    raise AssertionError(f"wrote {len(stored)} objects of {OBJECT} bytes and none was refused")


def test_full_daemons_refuse_writes_serve_reads_and_deletes(small_cluster: Cluster) -> None:
    cluster = small_cluster
    rng = random.Random(5)
    stored, refusal = trio.run(fill, cluster, rng)
    assert "is full" in refusal.message
    assert "reads and deletes still work" in refusal.message

    # The master hears about it with the next heartbeats.
    wait_until(lambda: "OSD_FULL" in status_text(cluster)[1], "store status to say OSD_FULL")
    code, text = status_text(cluster)
    assert code != 0
    assert "HEALTH_ERR" in text
    assert "writes refused" in text
    assert "what to do:" in text and "Delete data" in text
    detail = cluster.cli("health", "detail", check=False)
    assert detail.returncode == 2
    assert "OSD_FULL" in detail.stdout.decode()
    assert "full_ratio 50%" in detail.stdout.decode()
    assert "refusing writes" in cluster.log("osd.0") + cluster.log("osd.1") + cluster.log("osd.2")

    async def read_then_delete() -> None:
        async with Client.connect(cluster.config()) as client:
            for name, data in list(stored.items())[:5]:
                assert await client.read(POOL, name, 0, OBJECT) == data
            with pytest.raises(RemoteError) as again:
                await client.write_full(POOL, "one-more", b"x" * 4096)
            assert again.value.code == Code.ENOSPC
            # Deletes free space even now.
            for name in list(stored)[: len(stored) // 3]:
                await client.delete(POOL, name)
                del stored[name]

    trio.run(read_then_delete)

    last_refusal: list[str] = []

    async def write_accepted() -> bool:
        async with Client.connect(cluster.config()) as client:
            try:
                await client.write_full(POOL, "after-deletes", b"y" * 4096)
            except RemoteError as exc:
                if exc.code == Code.ENOSPC:
                    last_refusal[:] = [exc.message]
                    return False
                raise
            return await client.read(POOL, "after-deletes") == b"y" * 4096

    try:
        wait_until(lambda: trio.run(write_accepted), "writes accepted again after deletes")
    except AssertionError as exc:
        # Say why, from the cluster's own words: the refusal, the status, the daemons' logs.
        logs = "\n".join(
            f"--- osd.{i}\n" + "\n".join(cluster.log(f"osd.{i}").splitlines()[-15:])
            for i in range(3)
        )
        raise AssertionError(
            f"{exc}; last refusal: {last_refusal}\n{status_text(cluster)[1]}\n{logs}"
        ) from None
    wait_until(lambda: "OSD_FULL" not in status_text(cluster)[1], "OSD_FULL to clear")
    # A third deleted: still above nearfull_ratio, so the warning stays.
    code, text = status_text(cluster)
    assert "OSD_NEARFULL" in text, text
    assert code == 1
