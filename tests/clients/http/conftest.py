"""A real cluster and real `store http serve` processes for the HTTP gateway's tests.

Every gateway serves `--metrics` on a port of its own, and is ready when its `/readyz`
says so. The module's main gateway reads part of its settings from a `--config` file.
"""

from __future__ import annotations

import functools
import http.client
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.clients.gateway_process import GatewayProcess, started_gateways
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


class Gateway(GatewayProcess):
    """One `store http serve` process, with a metrics port of its own."""

    def __init__(
        self,
        cluster: Cluster,
        root: Path,
        name: str,
        *extra: str,
        config: str | None = None,
        conf: Path | None = None,
        metrics_port: int | None = None,
    ) -> None:
        super().__init__(cluster, root, name, extra)
        self.metrics_port = metrics_port or free_port()
        token_file = root / "tokens"
        token_file.write_text(f"# tokens of the test gateways\n{TOKEN}\n")
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = root / f"{name}.toml"
            self.config_path.write_text(config)
        self.args = self.serve_args(
            "http",
            conf or cluster.conf,
            "--token-file",
            str(token_file),
            "--public",
            PUBLIC_POOL,
            "--metrics",
            f"127.0.0.1:{self.metrics_port}",
            "-v",
            *(["--config", str(self.config_path)] if self.config_path else []),
            *extra,
        )

    def ready(self) -> bool:
        return self.metrics_get("/readyz")[0] == 200

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
    with started_gateways(functools.partial(Gateway, cluster, root)) as make:
        yield make


@pytest.fixture(scope="module")
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(config=GATEWAY_CONFIG)


@pytest.fixture(scope="session")
def curl() -> str:
    """The curl binary; the tests that use it fail (never skip) without it."""
    path = shutil.which("curl")
    assert path is not None, "curl is not installed (apt-get install curl)"
    return path
