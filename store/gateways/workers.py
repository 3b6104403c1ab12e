"""Several processes serving one gateway port: ``serve --workers N``.

A gateway process runs its requests on one trio thread, so it uses one core however many
the machine has. With ``--workers N`` the ``serve`` command becomes a supervisor instead:
it reserves the port (bound, not listening), then starts N workers — the same command
line, each told by the environment which worker it is and which port to use — that each
listen on the port with SO_REUSEPORT, so the kernel spreads new connections among them.
Gateways keep no state of their own (users, buckets, uploads and images live in the
cluster), so workers never need to talk to one another.

The supervisor restarts a worker that dies, at most once a second each. A worker that
fails within its first seconds is not restarted: the supervisor stops the others and
exits with its status, as a single gateway that cannot start would. SIGTERM or SIGINT
stops every worker (SIGTERM, then SIGKILL after a grace period); a worker whose
supervisor is gone gets SIGTERM from the kernel. Worker i serves its metrics on the
``--metrics`` port + i.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("store.gateway")

WORKER_ENV = "STORE_GATEWAY_WORKER"  # "INDEX:PORT", set by the supervisor for its workers
RESTART_DELAY = 1.0  # seconds between two starts of one worker
START_GRACE = 5.0  # a worker that fails sooner after its first start stops the gateway
STOP_GRACE = 10.0  # seconds workers get to exit after SIGTERM
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSlot:
    """What a worker is told: its index and the port every worker listens on."""

    index: int
    port: int

    def metrics(self, metrics: str | None) -> str | None:
        """This worker's metrics address: the gateway's, its port moved by the index
        (port 0 stays 0: any free port)."""
        if metrics is None:
            return None
        host, _, port = metrics.rpartition(":")
        return metrics if int(port) == 0 else f"{host}:{int(port) + self.index}"


def current() -> WorkerSlot | None:
    """This process's slot if a supervisor started it, else None."""
    value = os.environ.get(WORKER_ENV)
    if not value:
        return None
    index, _, port = value.partition(":")
    return WorkerSlot(int(index), int(port))


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port with SO_REUSEPORT and not listening: it holds the port
    (and picks one for port 0) without ever taking a connection."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM when the supervisor goes away.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class _Worker:
    def __init__(self, index: int, port: int, argv: list[str]) -> None:
        self.index, self.port, self.argv = index, port, argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.starts = 0

    def start(self) -> None:
        env = {**os.environ, WORKER_ENV: f"{self.index}:{self.port}"}
        self.proc = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent)
        self.started = time.monotonic()
        self.starts += 1


def supervise(count: int, host: str, port: int, argv: list[str] | None = None) -> int:
    """Run `count` workers of this command on host:port until SIGTERM or SIGINT; the exit
    status (0, or that of a worker that could not start)."""
    reserved = reserve_port(host, port)
    port = int(reserved.getsockname()[1])
    command = argv if argv is not None else [sys.executable, "-m", "store", *sys.argv[1:]]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    workers = [_Worker(i, port, command) for i in range(count)]
    status = 0
    try:
        for worker in workers:
            worker.start()
        log.info("serving %s:%d with %d workers", host, port, count)
        while not stopping:
            time.sleep(0.1)
            now = time.monotonic()
            for worker in workers:
                assert worker.proc is not None
                code = worker.proc.poll()
                if code is None or stopping:
                    continue
                if worker.starts == 1 and code > 0 and now - worker.started < START_GRACE:
                    log.error("worker %d could not start (exit status %d)", worker.index, code)
                    status, stopping = code, True
                elif now - worker.started >= RESTART_DELAY:
                    log.warning(
                        "worker %d exited (status %d): starting it again", worker.index, code
                    )
                    worker.start()
    finally:
        _stop_all(workers)
        reserved.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _stop_all(workers: list[_Worker]) -> None:
    running = [w.proc for w in workers if w.proc is not None and w.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
