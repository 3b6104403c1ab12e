"""Real clusters for tests: a master and daemons as separate processes on loopback.

Every process a test starts is registered here and killed when the test ends, whatever
happened. Daemons heartbeat fast and the master's grace is short, so failure tests take
seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from store import auth, tls
from store.client.config import ClientConfig, load_config, write_config


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Poll `check` until it is true; fail saying `what` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def scheduling_policies(pid: int) -> set[int]:
    """The scheduling policies of every thread of process `pid` (store.threadsched)."""
    policies = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            policies.add(os.sched_getscheduler(int(tid)))
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
    return policies


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_pair() -> int:
    """A free port p with p + 1 free as well (a second worker's metrics port)."""
    for _ in range(100):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports")


def free_dual_port() -> int:
    """A port free for both TCP and UDP (daemons use both on one number)."""
    for _ in range(100):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


class Cluster:
    def __init__(self, root: Path, *, grace: float = 3.0, heartbeat: float = 0.5) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.tls_dir = root / "tls"
        self.grace = grace
        self.master_extra: list[str] = []
        self.heartbeat = heartbeat
        self.port = free_port()
        self.master_addr = f"127.0.0.1:{self.port}"  # what clients are told
        self.master_listen = self.master_addr  # what the master binds
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.osd_ports: dict[int, int] = {}
        self.metrics_ports: dict[str, int] = {}  # process name -> its --metrics port
        self.dashboard_port: int | None = None
        tls.init_ca(self.tls_dir)
        tls.issue(self.tls_dir, "osd", role="osd")

    # --- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "store", *args],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start_master(
        self, extra: list[str] | None = None, *, metrics: bool = False, dashboard: bool = False
    ) -> None:
        http: list[str] = []
        if metrics:
            port = self.metrics_ports.setdefault("master", free_port())
            http += ["--metrics", f"127.0.0.1:{port}"]
        if dashboard:
            self.dashboard_port = self.dashboard_port or free_port()
            http += ["--dashboard", f"127.0.0.1:{self.dashboard_port}"]
        # A first start may find its free port taken since free_port() looked (by another
        # test's process): then it moves to another one, as nothing knows the old yet.
        movable = "master" not in self.procs and self.master_listen == self.master_addr
        key = self.root / "master" / "admin.key"
        for attempt in range(3):
            logged = self._log_size("master")
            self._spawn(
                "master",
                [
                    "master",
                    "--data-dir",
                    str(self.root / "master"),
                    "--listen",
                    self.master_listen,
                    "--tls-dir",
                    str(self.tls_dir),
                    "--osd-grace",
                    str(self.grace),
                    "-vv",
                    *http,
                    *(extra or self.master_extra),
                ],
            )
            try:
                self._wait(lambda: key.exists() and self._accepting(self.port), "master start")
                break
            except AssertionError:
                taken = "Address already in use" in self.log("master")[logged:]
                if not (movable and taken) or attempt == 2:
                    raise
                self.port = free_port()
                self.master_addr = self.master_listen = f"127.0.0.1:{self.port}"
        conf = self.root / "store.conf"
        write_config(
            conf, master=self.master_addr, ca=self.tls_dir / "ca.crt", keyring=key, timeout=20.0
        )
        self.conf = conf

    def start_osd(
        self,
        i: int,
        *,
        host: str | None = None,
        extra: list[str] | None = None,
        metrics: bool = False,
    ) -> None:
        port = self.osd_ports.setdefault(i, free_dual_port())
        extra = list(extra or [])
        if not any(a in extra for a in ("--config", "--full-ratio", "--nearfull-ratio")):
            # The test's disk is the host's, maybe busy: the thresholds are about the
            # daemon, not the machine, so they sit clear of it unless a test sets its own.
            extra += ["--full-ratio", "0.999", "--nearfull-ratio", "0.998"]
        if metrics:
            metrics_port = self.metrics_ports.setdefault(f"osd.{i}", free_port())
            extra += ["--metrics", f"127.0.0.1:{metrics_port}"]
        self._spawn(
            f"osd.{i}",
            [
                "osd",
                "--dir",
                str(self.root / f"osd.{i}"),
                "--master",
                self.master_addr,
                "--listen",
                f"127.0.0.1:{port}",
                "--tls-dir",
                str(self.tls_dir),
                "--heartbeat",
                str(self.heartbeat),
                "--host",
                host or f"host{i}",
                "-vv",
                *extra,
            ],
        )

    def wait_registered(self, i: int) -> None:
        """Wait until daemon directory i has its id (start daemons one at a time so that
        directory osd.N holds daemon N)."""
        identity = self.root / f"osd.{i}" / "identity.json"

        def registered() -> bool:
            try:
                return json.loads(identity.read_text()).get("osd_id") == i
            except (OSError, ValueError):
                return False

        self._wait(registered, f"osd.{i} to register")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=15)

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGKILL)

    def _log_size(self, name: str) -> int:
        try:
            return len(self.log(name))
        except OSError:
            return 0

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def metrics_url(self, name: str, path: str = "/metrics") -> str:
        """URL on the --metrics port of a process started with metrics=True."""
        return f"http://127.0.0.1:{self.metrics_ports[name]}{path}"

    # --- helpers -----------------------------------------------------------------------

    def config(self, **kwargs: object) -> ClientConfig:
        return load_config(self.conf, **kwargs)  # type: ignore[arg-type]

    def add_client(self, name: str, caps: list[str]) -> Path:
        """A key file for a new client, made through the real CLI."""
        keyfile = self.root / f"{name}.key"
        self.cli("auth", "add", name, *[a for c in caps for a in ("--cap", c)], "-o", str(keyfile))
        return keyfile

    def cli(
        self, *args: str, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        env = {**os.environ, "STORE_CONF": str(self.conf)}
        result = subprocess.run(
            [sys.executable, "-m", "store", *args],
            env=env,
            capture_output=True,
            input=input,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"store {' '.join(args)} failed ({result.returncode}):\n{result.stderr.decode()}"
            )
        return result

    def wait_healthy(self, timeout: float = 60.0) -> None:
        def healthy() -> bool:
            return self.cli("status", check=False).returncode == 0

        self._wait(healthy, "HEALTH_OK", timeout)

    @staticmethod
    def _accepting(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def _wait(self, check: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None and name in ("master",):
                    raise AssertionError(
                        f"{name} exited ({proc.returncode}):\n{self.log(name)[-3000:]}"
                    )
            if check():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def running_cluster(
    root: Path, pools: dict[str, tuple[int, int]], osds: int = 3, **settings: float
) -> Iterator[Cluster]:
    """A master and `osds` daemons, with `pools` (name: (size, pg_num)) made and the cluster
    healthy; every process is stopped at the end."""
    cluster = Cluster(root, **settings)
    try:
        cluster.start_master()
        for i in range(osds):
            cluster.start_osd(i)
            cluster.wait_registered(i)
        for name, (size, pg_num) in pools.items():
            cluster.cli("pool", "create", name, "--size", str(size), "--pg-num", str(pg_num))
        cluster.wait_healthy()
        yield cluster
    finally:
        cluster.stop()


def read_admin_secret(cluster: Cluster) -> bytes:
    return auth.read_keyfile(cluster.root / "master" / "admin.key")[1]
