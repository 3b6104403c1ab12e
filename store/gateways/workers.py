"""Several processes serving one gateway port: ``serve --workers N``.

A gateway process runs its requests on one trio thread, so it uses one core however many
the machine has. With ``--workers N`` the ``serve`` command becomes a supervisor instead:
it reserves the port (bound, not listening), then starts N workers — the same command
line, each told by the environment which worker it is, which port to use and where to say
it is ready — that each listen on the port with SO_REUSEPORT, so the kernel spreads new
connections among them. Gateways keep no state of their own (users, buckets, uploads and
images live in the cluster), so workers never need to talk to one another.

A worker says it is ready, once it listens, by writing to a pipe its supervisor gave it.
One that exits with an error before it was ever ready stops the gateway (the supervisor
stops the others and exits with its status), as a single gateway that cannot start would.
Any other worker that dies is started again: at once if it had been ready, else after a
pause that doubles with each failure in a row (1 s up to a minute). SIGTERM or SIGINT stops
every worker (SIGTERM, then SIGKILL after a grace period); a worker whose supervisor is
gone gets SIGTERM from the kernel. Worker i serves its metrics on the ``--metrics`` port + i.
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
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger("store.gateway")

WORKER_ENV = "STORE_GATEWAY_WORKER"  # "INDEX:PORT:SUPERVISOR_PID:READY_FD"
RESTART_DELAY = 1.0  # seconds between two starts of one worker, doubled per failure in a row
MAX_RESTART_DELAY = 60.0
STOP_GRACE = 10.0  # seconds workers get to exit after SIGTERM
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerSlot:
    """What a worker is told: its index, the port every worker listens on, and the pipe
    to say it is ready on."""

    index: int
    port: int
    ready_fd: int

    def metrics(self, metrics: str | None) -> str | None:
        """This worker's metrics address: the gateway's, its port moved by the index
        (port 0 stays 0: any free port)."""
        if metrics is None:
            return None
        host, _, port = metrics.rpartition(":")
        return metrics if int(port) == 0 else f"{host}:{int(port) + self.index}"


def current() -> WorkerSlot | None:
    """This process's slot if its supervisor started it, else None. The variable is
    taken out of the environment, so that nothing this process starts inherits it."""
    value = os.environ.pop(WORKER_ENV, None)
    if not value:
        return None
    try:
        index, port, supervisor, ready_fd = (int(part) for part in value.split(":"))
    except ValueError:
        raise ValueError(f"${WORKER_ENV} is not INDEX:PORT:PID:FD: {value!r}") from None
    if supervisor != os.getppid():
        return None  # inherited from a supervisor that is not our parent
    return WorkerSlot(index, port, ready_fd)


def announce_ready(slot: WorkerSlot) -> None:
    """Tell the supervisor this worker listens."""
    try:
        os.write(slot.ready_fd, b"r")
        os.close(slot.ready_fd)
    except OSError:
        pass  # the supervisor is gone: the kernel stops us soon


def addresses(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    """(family, address) of each address `host` names, for listening on `port`."""
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    out: list[tuple[int, tuple[str, int]]] = []
    for family, _, _, _, address in found:
        entry = (int(family), (str(address[0]), int(address[1])))
        if entry not in out:
            out.append(entry)
    return out


def shared_socket(family: int, address: tuple[str, int]) -> socket.socket:
    """A socket bound to `address` with SO_REUSEPORT (IPv6 ones IPv6 only, as trio's own
    listeners are), not listening yet."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of `host` at `port` (for port 0: the one the first
    gets) and not listening: they hold the port without ever taking a connection."""
    reserved: list[socket.socket] = []
    try:
        for family, (ip, _) in addresses(host, port):
            reserved.append(shared_socket(family, (ip, port)))
            port = int(reserved[0].getsockname()[1])
    except OSError:
        for sock in reserved:
            sock.close()
        raise
    return reserved


def _in_child(supervisor: int) -> Callable[[], None]:
    def setup() -> None:
        # Between fork and exec: SIGTERM when the supervisor goes away, and if it went
        # away already (before the call took effect), stop now.
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
        if os.getppid() != supervisor:
            os._exit(1)

    return setup


class _Worker:
    def __init__(self, index: int, port: int, argv: list[str]) -> None:
        self.index, self.port, self.argv = index, port, argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_pipe: int | None = None  # read end of the pipe it says "ready" on
        self.ready = False
        self.starts = 0
        self.started_at = 0.0
        self.failures = 0  # exits in a row before becoming ready
        self.due = 0.0  # when to start it again (monotonic)

    def start(self) -> None:
        self.close_pipe()
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        supervisor = os.getpid()
        env = {**os.environ, WORKER_ENV: f"{self.index}:{self.port}:{supervisor}:{write_end}"}
        try:
            self.proc = subprocess.Popen(
                self.argv, env=env, pass_fds=(write_end,), preexec_fn=_in_child(supervisor)
            )
        finally:
            os.close(write_end)
        self.ready_pipe, self.ready = read_end, False
        self.started_at = time.monotonic()
        self.starts += 1

    def look_ready(self) -> None:
        if self.ready_pipe is None or self.ready:
            return
        try:
            said = os.read(self.ready_pipe, 16)
        except BlockingIOError:
            return
        if said:
            self.ready, self.failures = True, 0
            self.close_pipe()

    def close_pipe(self) -> None:
        if self.ready_pipe is not None:
            os.close(self.ready_pipe)
            self.ready_pipe = None


def supervise(count: int, host: str, port: int, argv: list[str] | None = None) -> int:
    """Run `count` workers of this command on host:port until SIGTERM or SIGINT; the exit
    status (0, or that of a worker that could not start)."""
    reserved = reserve_port(host, port)
    port = int(reserved[0].getsockname()[1])
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
            for worker in workers:
                status = _tend(worker, time.monotonic())
                if status:
                    stopping = True
                    break
    finally:
        _stop_all(workers)
        for sock in reserved:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _tend(worker: _Worker, now: float) -> int:
    """Look after one worker; a non-zero status when the gateway must stop for it."""
    assert worker.proc is not None
    worker.look_ready()
    code = worker.proc.poll()
    if code is None:
        return 0
    if worker.due == 0.0:  # just found dead: decide when it starts again
        if worker.ready:
            worker.due = max(now, worker.started_at + RESTART_DELAY)
            log.warning("worker %d exited (status %d): starting it again", worker.index, code)
        elif worker.starts == 1 and code > 0:
            log.error("worker %d could not start (exit status %d)", worker.index, code)
            return code
        else:
            worker.failures += 1
            pause = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** (worker.failures - 1))
            worker.due = now + pause
            log.warning(
                "worker %d exited (status %d) before it was ready: starting it again in %.0f s",
                worker.index,
                code,
                pause,
            )
    if now >= worker.due:
        worker.due = 0.0
        worker.start()
    return 0


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
    for worker in workers:
        worker.close_pipe()
