"""One writer at a time: the lock, its lease, a writer killed with -9, a broken lock."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.clients.nbd.conftest import QemuIo, Serve, image_info, new_image, run, store, tool
from tests.cluster.harness import Cluster

MiB = 1 << 20
BLOCK = 4096


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def lock_owner(cluster: Cluster, image: str) -> str | None:
    lock = image_info(cluster, image)["lock"]
    return None if lock is None else str(lock["owner"])  # type: ignore[index]


def test_second_writer_waits_for_the_lease_of_a_dead_one(
    nbd_cluster: Cluster, serve: Serve, qemu_io: Callable[[str], QemuIo]
) -> None:
    image = new_image(nbd_cluster, "contended", "32M")
    first = serve(image, "--lease", "3")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x61 0 1M", first.uri)
    qemu_io(first.uri)  # holds a connection open, so the first gateway keeps the lock
    wait_for(lambda: f"pid {first.pid}" in (lock_owner(nbd_cluster, image) or ""), "the lock")

    second = serve(image, "--lease", "3")
    assert run("nbdinfo", second.uri, check=False).returncode != 0
    assert "is locked by nbdkit (client.admin on" in second.log()
    assert f"pid {first.pid}" in second.log()

    first.kill()  # -9: the lock stays in the header until its lease ends
    assert f"pid {first.pid}" in (lock_owner(nbd_cluster, image) or "")
    wait_for(lambda: run("nbdinfo", second.uri, check=False).returncode == 0, "the lease to end")
    run("qemu-io", "-f", "raw", "-c", "read -P 0x61 0 1M", "-c", "write -P 0x62 1M 1M",
        "-c", "read -P 0x62 1M 1M", second.uri)  # fmt: skip
    second.stop()
    assert lock_owner(nbd_cluster, image) is None  # released when nbdkit stopped


def test_a_broken_lock_fences_the_old_writer(
    nbd_cluster: Cluster, serve: Serve, qemu_io: Callable[[str], QemuIo]
) -> None:
    image = new_image(nbd_cluster, "broken", "16M")
    first = serve(image, "--lease", "3")
    old = qemu_io(first.uri)
    wait_for(lambda: lock_owner(nbd_cluster, image) is not None, "the lock")

    refused = store(nbd_cluster, "image", "unlock", image, check=False)
    assert refused.returncode != 0 and b"--force" in refused.stderr
    broken = store(nbd_cluster, "image", "unlock", image, "--force").stdout.decode()
    assert f"pid {first.pid}" in broken

    second = serve(image, "--lease", "3")
    run("qemu-io", "-f", "raw", "-c", "write -P 0x71 0 64k", second.uri)
    time.sleep(2.5)  # the old writer's next renewal finds the lock gone
    old.send("write -P 0x70 0 64k")
    assert "Input/output error" in old.finish()
    assert "was broken" in first.log()
    run("qemu-io", "-f", "raw", "-c", "read -P 0x71 0 64k", second.uri)


# Copies a file to stdout in 1 MiB chunks, ten per second.
SLOW_FEED = """
import sys, time
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(1 << 20):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        time.sleep(0.1)
"""


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_kill_9_during_nbdcopy_keeps_what_was_flushed(
    nbd_cluster: Cluster, serve: Serve, tmp_path: Path
) -> None:
    image = new_image(nbd_cluster, "crash", "96M")
    first_data = random_bytes(96 * MiB, seed=11)
    second_data = random_bytes(48 * MiB, seed=12)
    (tmp_path / "a.bin").write_bytes(first_data)
    (tmp_path / "b.bin").write_bytes(second_data)
    writer = serve(image)
    run("nbdcopy", str(tmp_path / "a.bin"), writer.uri, timeout=300)  # ends with a flush

    # The copy reads its source from a pipe fed at ~10 MiB/s, so it lasts about five
    # seconds however fast the cluster writes, and the kill lands in its middle.
    feeder = subprocess.Popen(
        [sys.executable, "-c", SLOW_FEED, str(tmp_path / "b.bin")], stdout=subprocess.PIPE
    )
    assert feeder.stdout is not None
    copy = subprocess.Popen(
        [tool("nbdcopy"), "-", writer.uri],
        stdin=feeder.stdout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    feeder.stdout.close()  # the copy holds the pipe now
    try:
        time.sleep(1.5)
        assert copy.poll() is None, "the copy finished before nbdkit was killed"
        writer.kill()  # -9, in the middle of the copy
        assert copy.wait(timeout=60) != 0
    finally:
        for proc in (copy, feeder):
            if proc.poll() is None:
                proc.kill()
            proc.wait()

    reader = serve(image, "--readonly")
    run("nbdcopy", reader.uri, str(tmp_path / "out.bin"), timeout=300)
    out = (tmp_path / "out.bin").read_bytes()
    assert len(out) == 96 * MiB
    # Past the second copy, everything is the flushed first copy.
    assert out[48 * MiB :] == first_data[48 * MiB :]
    # Where the second copy was going, each block is whole: one copy's or the other's.
    new = 0
    for offset in range(0, 48 * MiB, BLOCK):
        block = out[offset : offset + BLOCK]
        if block == second_data[offset : offset + BLOCK]:
            new += 1
        else:
            assert block == first_data[offset : offset + BLOCK], f"torn block at {offset}"
    assert 0 < new < 48 * MiB // BLOCK
