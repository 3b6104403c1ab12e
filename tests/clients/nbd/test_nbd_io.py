"""Reads and writes through nbdkit with real NBD clients: nbdinfo, nbdcopy, qemu-img, qemu-io."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import trio

from store.client.api import Client
from store.image.model import data_object, header_object
from tests.clients.nbd.conftest import (
    POOL,
    Serve,
    image_info,
    new_image,
    run,
    store,
    tool,
)
from tests.cluster.harness import Cluster, free_port

MiB = 1 << 20


def sha256_of(path: Path, length: int | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left is None or left > 0:
            block = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


def random_file(path: Path, size: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(rng.randbytes(MiB))
    return path


def test_plugin_loads_from_a_shell_without_the_venv(nbd_cluster: Cluster, short_dir: Path) -> None:
    """`nbdkit python $(store nbd plugin-path) image=...` from a bare shell, not through serve."""
    image = new_image(nbd_cluster, "bare-shell", "64M")
    store_bin = Path(sys.executable).parent / "store"  # the installation's own script
    assert store_bin.exists(), store_bin
    sock = short_dir / "bare.sock"
    metrics = f"127.0.0.1:{free_port()}"
    script = (
        f"exec nbdkit --foreground --unix {sock} python "
        f'"$({store_bin} nbd plugin-path)" image={image} conf={nbd_cluster.conf} '
        f"metrics={metrics}"
    )
    bare_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    bare_env["HOME"] = os.environ.get("HOME", "/root")
    tool("nbdkit")
    proc = subprocess.Popen(
        ["bash", "-c", script],
        env=bare_env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "nbdkit did not start"
            time.sleep(0.05)
        size = run("nbdinfo", "--size", f"nbd+unix:///?socket={sock}").stdout
        assert int(size) == 64 * MiB
        # Not started by `store nbd serve`: /config lists the plugin's own parameters.
        with urllib.request.urlopen(f"http://{metrics}/config", timeout=10) as answer:
            doc = json.loads(answer.read())
        assert doc["role"] == "nbd" and doc["command"].startswith("nbdkit python")
        assert doc["pid"] == proc.pid  # bash exec'd nbdkit
        found = doc["settings"]
        assert found["image"] == {"value": image, "source": "nbdkit parameter"}
        assert found["metrics"] == {"value": metrics, "source": "nbdkit parameter"}
        assert found["lease"] == {"value": None, "source": "default"}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_serving_a_missing_image_fails_at_start(serve: Serve) -> None:
    server = serve(f"{POOL}/no-such-image", ready=False)
    assert server.wait_exit() != 0
    assert "no image rbd/no-such-image" in server.log()


def test_serve_reuses_the_socket_of_a_killed_server(
    nbd_cluster: Cluster, serve: Serve, short_dir: Path
) -> None:
    image = new_image(nbd_cluster, "reborn", "16M")
    first = serve(image, "--readonly", sock=short_dir / "same.sock")
    first.kill()  # -9 leaves the socket file behind
    assert first.sock.exists()
    second = serve(image, "--readonly", sock=first.sock)
    assert int(run("nbdinfo", "--size", second.uri).stdout) == 16 * MiB


def test_nbdinfo_shows_size_and_capabilities(nbd_cluster: Cluster, serve: Serve) -> None:
    image = new_image(nbd_cluster, "info", "1G")
    server = serve(image)
    info = json.loads(run("nbdinfo", "--json", server.uri).stdout)
    export = info["exports"][0]
    assert export["export-size"] == 1 << 30
    assert export["description"] == f"store image {image}"
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn"):
        assert export[flag] is True, flag
    assert export["is_read_only"] is False
    assert export["block_size_preferred"] == 4 * MiB


def test_nbdcopy_256_mib_in_and_out(nbd_cluster: Cluster, serve: Serve, tmp_path: Path) -> None:
    image = new_image(nbd_cluster, "copy", "256M")
    source = random_file(tmp_path / "in.bin", 256 * MiB, seed=1)
    server = serve(image)
    run("nbdcopy", str(source), server.uri, timeout=300)
    out = tmp_path / "out.bin"
    run("nbdcopy", server.uri, str(out), timeout=300)
    assert sha256_of(out) == sha256_of(source)


def test_qemu_img_convert_and_compare(nbd_cluster: Cluster, serve: Serve, tmp_path: Path) -> None:
    image = new_image(nbd_cluster, "qemu-img", "48M")
    source = random_file(tmp_path / "src.raw", 48 * MiB, seed=2)
    with open(source, "r+b") as f:  # a hole in the middle, for the sparse paths
        f.seek(20 * MiB)
        f.write(bytes(8 * MiB))
    server = serve(image)
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), server.uri)
    run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), server.uri)
    source.write_bytes(b"different" + source.read_bytes()[9:])
    assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", str(source), server.uri,
               check=False).returncode == 1  # fmt: skip


def test_qemu_io_pattern_zero_discard_flush_fua(nbd_cluster: Cluster, serve: Serve) -> None:
    image = new_image(nbd_cluster, "qemu-io", "64M")
    server = serve(image)
    commands = [
        "write -P 0x5a 1000 70000",  # unaligned, inside one object
        "read -P 0x5a 1000 70000",
        "read -P 0 0 1000",
        "write -P 0x6b 4190000 200000",  # across an object boundary
        "read -P 0x6b 4190000 200000",
        "write -P 0x11 8M 9M",
        "write -z 9M 4M",  # write zeroes, no hole punching
        "read -P 0x11 8M 1M",
        "read -P 0 9M 4M",
        "read -P 0x11 13M 4M",
        "write -z -u 12M 8M",  # may trim: whole object 4 freed
        "read -P 0 12M 8M",
        "discard 0 4M",
        "read -P 0 0 4M",
        "write -f -P 0x22 40M 64k",  # FUA
        "flush",
        "read -P 0x22 40M 64k",
        "aio_write -P 0x33 48M 1M",
        "aio_write -P 0x34 49M 1M",
        "aio_flush",
        "read -P 0x33 48M 1M",
        "read -P 0x34 49M 1M",
    ]
    args = [a for c in commands for a in ("-c", c)]
    out = run("qemu-io", "-f", "raw", *args, server.uri).stdout
    assert "Pattern verification failed" not in out, out
    assert out.count("read ") == 11, out
    # A new connection sees the same bytes (the discard took the part below 4 MiB).
    run("qemu-io", "-f", "raw", "-c", "read -P 0 4190000 4304", "-c",
        "read -P 0x6b 4M 195696", "-c", "read -P 0x22 40M 64k", server.uri)  # fmt: skip


def test_resize_is_seen_by_a_new_connection(nbd_cluster: Cluster, serve: Serve) -> None:
    image = new_image(nbd_cluster, "grow", "32M")
    server = serve(image)
    assert int(run("nbdinfo", "--size", server.uri).stdout) == 32 * MiB
    run("qemu-io", "-f", "raw", "-c", "write -P 0x44 31M 1M", server.uri)
    store(nbd_cluster, "image", "resize", image, "--size", "96M")
    assert int(run("nbdinfo", "--size", server.uri).stdout) == 96 * MiB
    run("qemu-io", "-f", "raw", "-c", "write -P 0x45 95M 1M", "-c", "read -P 0x44 31M 1M",
        "-c", "read -P 0 32M 63M", "-c", "read -P 0x45 95M 1M", server.uri)  # fmt: skip


def test_read_only_export_refuses_writes(nbd_cluster: Cluster, serve: Serve) -> None:
    image = new_image(nbd_cluster, "ro", "16M")
    writer = serve(image)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x77 0 1M", writer.uri)
    writer.stop()
    reader = serve(image, "--readonly")
    info = json.loads(run("nbdinfo", "--json", reader.uri).stdout)
    assert info["exports"][0]["is_read_only"] is True
    run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0x77 0 1M", reader.uri)
    failed = run("qemu-io", "-f", "raw", "-c", "write 0 4k", reader.uri, check=False)
    # The export says it is read-only, so the client refuses to open it for writing.
    assert failed.returncode != 0 and "Permission denied" in failed.stdout + failed.stderr
    assert image_info(nbd_cluster, image)["lock"] is None


def test_key_that_may_only_read_gets_eperm(nbd_cluster: Cluster, serve: Serve) -> None:
    image = new_image(nbd_cluster, "viewer", "16M")
    keyfile = nbd_cluster.add_client("nbd-viewer", [f"{POOL}=r"])
    writable = serve(image, "--keyring", str(keyfile))
    refused = run("nbdinfo", writable.uri, check=False)
    assert refused.returncode != 0
    assert "may only read pool rbd" in writable.log()
    reader = serve(image, "--keyring", str(keyfile), "--readonly")
    run("qemu-io", "-r", "-f", "raw", "-c", "read -P 0 0 1M", reader.uri)


def test_cluster_failure_is_an_io_error_not_a_hang(nbd_cluster: Cluster, serve: Serve) -> None:
    image = new_image(nbd_cluster, "stalled", "64M")
    image_id = str(image_info(nbd_cluster, image)["id"])

    async def object_away_from_the_header() -> tuple[int, int]:
        """A data object whose primary daemon does not also serve the header."""
        async with Client.connect(nbd_cluster.config()) as client:
            header_primary = client.locate(POOL, header_object(image_id))["primary"]
            for index in range(16):
                primary = client.locate(POOL, data_object(image_id, index))["primary"]
                if primary != header_primary:
                    return index, int(primary)
        raise AssertionError("every object shares the header's primary")

    index, primary = trio.run(object_away_from_the_header)
    where = f"{index * 4}M"
    writer = serve(image)
    run("qemu-io", "-f", "raw", "-c", f"write -P 1 {where} 4k", writer.uri)
    writer.stop()
    # Read-only: nothing is written while the daemon is paused, so no replica falls behind.
    server = serve(image, "--readonly", "--timeout", "2")
    daemon = nbd_cluster.procs[f"osd.{primary}"]
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        failed = run(
            "qemu-io", "-r", "-f", "raw", "-c", f"read {where} 4k", server.uri, check=False
        )
        elapsed = time.monotonic() - started
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert "Input/output error" in failed.stdout + failed.stderr, failed
    assert elapsed < 10
    run("qemu-io", "-r", "-f", "raw", "-c", f"read -P 1 {where} 4k", server.uri)
