"""A real cluster and real `store http serve` processes for the HTTP gateway's tests.

Every gateway serves `--metrics` on a port of its own, and is ready when its `/readyz`
says so. The module's main gateway reads part of its settings from a `--config` file.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, free_port, running_cluster

TOKEN = "test-token-0123456789abcdef"
PUBLIC_POOL = "pub"
POOL = "default"
MAX_OBJECT_SIZE = 256 * 1024 * 1024
# The main gateway's settings file; its `listen` is overridden on the command line.
GATEWAY_CONFIG = f"""# store http serve --config
listen = "127.0.0.1:1"
max-object-size = {MAX_OBJECT_SIZE}
read_grace = 30.0
log-format = "json"
"""


class Gateway:
    """One `store http serve` process; stopped (SIGKILL to its group) by `stop`."""

    def __init__(
        self,
        cluster: Cluster,
        root: Path,
        name: str,
        *extra: str,
        config: str | None = None,
        conf: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = root / f"{name}.log"
        token_file = root / "tokens"
        token_file.write_text(f"# tokens of the test gateways\n{TOKEN}\n")
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = root / f"{name}.toml"
            self.config_path.write_text(config)
        self.args = [
            sys.executable,
            "-m",
            "store",
            "http",
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--conf",
            str(conf or cluster.conf),
            "--token-file",
            str(token_file),
            "--public",
            PUBLIC_POOL,
            "--metrics",
            f"127.0.0.1:{self.metrics_port}",
            "-v",
            *(["--config", str(self.config_path)] if self.config_path else []),
            *extra,
        ]
        self.scheme = "https" if "--tls-cert" in extra else "http"
        self.proc: subprocess.Popen[bytes] | None = None

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

    def start(self) -> Gateway:
        proc = self.launch()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"gateway exited ({proc.returncode}):\n{self.log()}")
            if self.metrics_get("/readyz")[0] == 200:
                return self
            time.sleep(0.1)
        raise AssertionError(f"gateway did not start:\n{self.log()}")

    def metrics_get(self, path: str) -> tuple[int, bytes]:
        """GET `path` on the metrics port: (status, body), (0, b"") if it does not answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    @property
    def metrics_address(self) -> str:
        return f"127.0.0.1:{self.metrics_port}"

    def log_lines(self) -> list[dict[str, object]]:
        """The gateway's log, written with log-format json: one object a line."""
        text = self.log_path.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three daemons; pools `default` (size 2) and `pub` (public through the gateway)."""
    pools = {POOL: (2, 16), PUBLIC_POOL: (2, 8), "private": (1, 8)}
    with running_cluster(tmp_path_factory.mktemp("http-cluster"), pools) as c:
        yield c


@pytest.fixture(scope="module")
def gateway_factory(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Start gateways against the module's cluster; every one is killed at the end."""
    root = tmp_path_factory.mktemp("http-gateways")
    made: list[Gateway] = []

    def make(*extra: str, config: str | None = None) -> Gateway:
        gateway = Gateway(cluster, root, f"gateway{len(made)}", *extra, config=config)
        made.append(gateway)
        return gateway.start()

    try:
        yield make
    finally:
        for gateway in made:
            gateway.kill()


@pytest.fixture(scope="module")
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(config=GATEWAY_CONFIG)


@pytest.fixture(scope="session")
def curl() -> str:
    """The curl binary; the tests that use it fail (never skip) without it."""
    path = shutil.which("curl")
    assert path is not None, "curl is not installed (apt-get install curl)"
    return path
