"""The NBD gateway against real clients: one cluster for the package, nbdkit servers, tools.

Every process, FUSE mount, loop device and mount point a test makes is undone when the
test ends, whatever happened. A missing client tool fails the test (never skips it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, running_cluster

POOL = "rbd"
PACKAGES = "nbdkit nbdkit-plugin-python libnbd-bin qemu-utils e2fsprogs fuse3"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; the NBD tests need: apt-get install {PACKAGES}")
    return path


def run(*args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a client tool (which must exist); on failure show what it said."""
    result = subprocess.run(
        [tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="package")
def nbd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Master and three daemons, pool `rbd` of size 3, shared by every NBD test."""
    # A long grace, so that a test that pauses a daemon for a few seconds does not get
    # it marked down (and the placement changed under the other tests).
    root = tmp_path_factory.mktemp("nbd-cluster")
    with running_cluster(root, {POOL: (3, 16)}, grace=15.0) as cluster:
        yield cluster


def store(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return cluster.cli(*args, check=check)


def image_info(cluster: Cluster, image: str, *extra: str) -> dict[str, object]:
    return dict(json.loads(store(cluster, "image", "info", image, "--json", *extra).stdout))


def new_image(cluster: Cluster, name: str, size: str, *extra: str) -> str:
    image = f"{POOL}/{name}"
    store(cluster, "image", "create", image, "--size", size, *extra)
    return image


class NbdServer:
    """`store nbd serve` (which becomes nbdkit) on a Unix socket."""

    def __init__(
        self, cluster: Cluster, image: str, folder: Path, *extra: str, sock: Path | None = None
    ) -> None:
        tool("nbdkit")
        self.image = image
        self.sock = sock or folder / f"nbd-{time.monotonic_ns()}.sock"
        self.log_path = folder / f"{self.sock.stem}.log"
        log = open(self.log_path, "wb")  # noqa: SIM115 (handed to the child)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "store",
                "nbd",
                "serve",
                image,
                "--unix",
                str(self.sock),
                "--conf",
                str(cluster.conf),
                *extra,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    @property
    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.sock}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> NbdServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nbdkit exited ({self.proc.returncode}):\n{self.log()}")
            if self.sock.exists() and self._greets():
                return self
            time.sleep(0.05)
        raise AssertionError(f"nbdkit did not listen on {self.sock}:\n{self.log()}")

    def _greets(self) -> bool:
        """nbdkit listens before the plugin has connected to the cluster, but greets new
        clients only once it has: wait for the greeting, not just for the socket."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            try:
                s.connect(str(self.sock))
                return s.recv(8) == b"NBDMAGIC"
            except OSError:
                return False

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM (nbdkit releases the lock), SIGKILL if it does not go."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


Serve = Callable[..., NbdServer]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path (Unix socket paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="nbd-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def serve(nbd_cluster: Cluster, short_dir: Path) -> Iterator[Serve]:
    """Start NBD servers: serve(image, *options, ready=True, sock=None). All stop at the end."""
    started: list[NbdServer] = []

    def start(image: str, *extra: str, ready: bool = True, sock: Path | None = None) -> NbdServer:
        server = NbdServer(nbd_cluster, image, short_dir, *extra, sock=sock)
        started.append(server)
        return server.wait_ready() if ready else server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@contextlib.contextmanager
def loop_device(uri: str, folder: Path, *, readonly: bool = False) -> Iterator[str]:
    """The export as a block device: nbdfuse exposes it as a file, losetup as a device."""
    for name in ("nbdfuse", "fusermount3", "losetup"):
        tool(name)
    fuse_dir = folder / f"fuse-{time.monotonic_ns()}"
    fuse_dir.mkdir()
    pidfile = folder / f"{fuse_dir.name}.pid"
    fuse = subprocess.Popen(
        ["nbdfuse", *(["-r"] if readonly else []), "-P", str(pidfile), str(fuse_dir / "disk"), uri],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    device = None
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            if fuse.poll() is not None:
                said = fuse.stderr.read().decode(errors="replace") if fuse.stderr else ""
                raise AssertionError(f"nbdfuse failed: {said}")
            if time.monotonic() > deadline:
                raise AssertionError("nbdfuse did not start")
            time.sleep(0.05)
        args = ["--find", "--show", *(["--read-only"] if readonly else []), str(fuse_dir / "disk")]
        device = run("losetup", *args).stdout.strip()
        yield device
    finally:
        if device:
            run("losetup", "-d", device, check=False)
        subprocess.run(["fusermount3", "-u", str(fuse_dir)], capture_output=True)
        try:
            fuse.wait(timeout=20)
        except subprocess.TimeoutExpired:
            fuse.kill()
            fuse.wait()
            subprocess.run(["fusermount3", "-uz", str(fuse_dir)], capture_output=True)
        with contextlib.suppress(OSError):
            fuse_dir.rmdir()


@contextlib.contextmanager
def mounted(device: str, mountpoint: Path, *options: str) -> Iterator[Path]:
    mountpoint.mkdir(exist_ok=True)
    run("mount", *(["-o", ",".join(options)] if options else []), device, str(mountpoint))
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()


class QemuIo:
    """An interactive qemu-io: holds one NBD connection open while commands arrive."""

    def __init__(self, uri: str) -> None:
        self.proc = subprocess.Popen(
            [tool("qemu-io"), "-f", "raw", uri],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> str:
        """Quit; returns everything qemu-io printed."""
        out, _ = self.proc.communicate("quit\n", timeout=timeout)
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def qemu_io() -> Iterator[Callable[[str], QemuIo]]:
    opened: list[QemuIo] = []

    def open_one(uri: str) -> QemuIo:
        q = QemuIo(uri)
        opened.append(q)
        return q

    try:
        yield open_one
    finally:
        for q in opened:
            q.kill()
