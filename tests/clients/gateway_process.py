"""Gateways as their tests run them: `store <gateway> serve` started through the command
line against a test cluster, in a process group of its own with its output in a log file,
and killed (SIGKILL to the group) at the end, whatever happens.

:class:`GatewayProcess` is one such process; a gateway's tests say how to start it (its
command line) and when it is ready. :func:`started_gateways` is what a ``gateway_factory``
fixture yields: a function that starts one more, every one of them killed on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self, TypeVar

from tests.cluster.harness import Cluster, free_port


class GatewayProcess:
    """One `store <gateway> serve` process listening on a free port of 127.0.0.1."""

    start_timeout = 30.0  # seconds `start` waits for `ready`
    log_tail = 5000  # characters of the log a failure shows

    def __init__(self, cluster: Cluster, root: Path, name: str, extra: Sequence[str]) -> None:
        self.cluster = cluster
        self.port = free_port()
        self.log_path = root / f"{name}.log"
        self.scheme = "https" if "--tls-cert" in extra else "http"
        self.args: list[str] = []  # set by the gateway's class: `serve_args`
        self.proc: subprocess.Popen[bytes] | None = None

    def serve_args(self, gateway: str, conf: Path, *options: str) -> list[str]:
        """`store <gateway> serve` on this process's port, with the client configuration."""
        return [
            sys.executable,
            "-m",
            "store",
            gateway,
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--conf",
            str(conf),
            *options,
        ]

    def ready(self) -> bool:
        """Whether the gateway serves (asked over and over while it starts)."""
        raise NotImplementedError

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the process; `start` also waits until it is ready."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self.proc

    def start(self) -> Self:
        proc = self.launch()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited ({proc.returncode}):\n{self.log()}")
            if self.ready():
                return self
            time.sleep(0.1)
        raise AssertionError(f"gateway did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-self.log_tail :]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def peak_memory_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")


def children_of(pid: int) -> set[int]:
    """The processes whose parent is `pid` (a gateway's workers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


G = TypeVar("G", bound=GatewayProcess)


@contextmanager
def started_gateways(new: Callable[..., G]) -> Iterator[Callable[..., G]]:
    """``make(*extra, **options)`` starts ``new("gatewayN", *extra, **options)`` and
    returns it once ready; every gateway it made is killed when the block ends."""
    made: list[G] = []

    def make(*extra: str, **options: Any) -> G:
        gateway = new(f"gateway{len(made)}", *extra, **options)
        made.append(gateway)
        return gateway.start()

    try:
        yield make
    finally:
        for gateway in made:
            gateway.kill()
