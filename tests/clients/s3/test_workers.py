"""`store s3 serve --workers N`: several processes on one port, each its own metrics port,
a dead worker started again, all of them gone with their supervisor."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.clients.gateway_process import alive, children_of
from tests.clients.s3.conftest import POOL, Gateway, User, s3_client
from tests.cluster.harness import Cluster, free_port, free_port_pair, wait_until
from tests.metric_samples import Samples, parse_samples


def metrics_up(port: int) -> bool:
    try:
        requests_served(port)
    except OSError:
        return False
    return True


def requests_served(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        samples: Samples = parse_samples(answer.read().decode())
    return sum(v for (name, _), v in samples.items() if name == "store_s3_requests_total")


def test_workers_share_the_port_and_are_started_again(
    gateway_factory: Callable[..., Gateway], user: User
) -> None:
    metrics = free_port_pair()
    gateway = gateway_factory("--workers", "2", "--metrics", f"127.0.0.1:{metrics}")
    assert gateway.proc is not None
    supervisor = gateway.proc.pid
    wait_until(lambda: len(children_of(supervisor)) == 2, "two workers")
    workers = children_of(supervisor)
    wait_until(lambda: metrics_up(metrics) and metrics_up(metrics + 1), "both metrics ports")

    name = f"workers-{uuid.uuid4().hex[:12]}"
    s3_client(gateway.url, user).create_bucket(Bucket=name)
    # Every client its own connection: the kernel spreads them over both workers.
    for i in range(40):
        s3_client(gateway.url, user).put_object(Bucket=name, Key=f"k{i}", Body=b"%d" % i)
    assert requests_served(metrics) > 0 and requests_served(metrics + 1) > 0

    # A worker killed is started again; the port is served all along.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: len(children_of(supervisor) - workers) == 1 and not alive(victim),
        "a new worker in place of the one killed",
    )
    for i in range(10):
        got = s3_client(gateway.url, user).get_object(Bucket=name, Key=f"k{i}")["Body"].read()
        assert got == b"%d" % i

    # SIGTERM to the supervisor ends every worker, and the supervisor after them: they are
    # gone (reaped) by the time it exits.
    current = children_of(supervisor)
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=20) == 0
    assert not any(alive(pid) for pid in current)


def test_workers_of_port_zero_share_the_port_picked(cluster: Cluster) -> None:
    proc = subprocess.Popen(
        [
            *serve_command(cluster, "127.0.0.1:0"),
            "--workers",
            "2",
        ],
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        port = 0
        for line in proc.stderr:
            found = re.search(rb"serving 127\.0\.0\.1:(\d+) with 2 workers", line)
            if found:
                port = int(found.group(1))
                break
        assert port, "the supervisor never said where it serves"
        wait_until(lambda: len(children_of(proc.pid)) == 2, "two workers")
        for pid in children_of(proc.pid):
            wait_until(lambda pid=pid: listens_on(pid, port), f"worker {pid} listening")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid` has a TCP socket listening on `port` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.split(":")[1], 16) == port and inode in inodes:
            return True
    return False


def serve_command(cluster: Cluster, listen: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "store",
        "s3",
        "serve",
        "--listen",
        listen,
        "--conf",
        str(cluster.conf),
        "--pool",
        POOL,
    ]


def test_a_worker_that_cannot_start_stops_the_gateway(cluster: Cluster) -> None:
    metrics = free_port_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics + 1))  # worker 1's metrics port
        taken.listen()
        run = subprocess.run(
            [
                *serve_command(cluster, f"127.0.0.1:{free_port()}"),
                "--workers",
                "2",
                "--metrics",
                f"127.0.0.1:{metrics}",
            ],
            capture_output=True,
            timeout=60,
        )
    assert run.returncode != 0
    assert b"worker 1 could not start" in run.stderr
