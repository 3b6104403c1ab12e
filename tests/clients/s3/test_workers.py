"""`store s3 serve --workers N`: several processes on one port, each its own metrics port,
a dead worker started again, all of them gone with their supervisor."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable

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

    # SIGTERM to the supervisor ends every worker, and the supervisor with them.
    current = children_of(supervisor)
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(timeout=20) == 0
    wait_until(lambda: not any(alive(pid) for pid in current), "every worker gone")


def test_a_worker_that_cannot_start_stops_the_gateway(cluster: Cluster) -> None:
    metrics = free_port_pair()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", metrics + 1))  # worker 1's metrics port
        taken.listen()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "store",
                "s3",
                "serve",
                "--listen",
                f"127.0.0.1:{free_port()}",
                "--conf",
                str(cluster.conf),
                "--pool",
                POOL,
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
