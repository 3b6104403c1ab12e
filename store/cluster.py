"""`store cluster up|down`: a whole local cluster in one command.

Everything lives under one directory: ``tls/`` (CA and certificates), ``master/``,
``osd.N/`` (one per daemon), a log and a PID file per process, ``cluster.json`` (the
master's port, so a restart finds it again) and, once the cluster serves, ``store.conf``
for clients. ``up`` on an existing directory starts whatever is not running.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import trio

from store import tls
from store.client.config import load_config, write_config
from store.client.master_link import MasterLink
from store.errors import RemoteError, StoreError
from store.status import summarize


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _spawn(directory: Path, name: str, args: list[str]) -> int:
    pid_file = directory / f"{name}.pid"
    pid = _alive(pid_file)
    if pid is not None:
        return pid
    log = open(directory / f"{name}.log", "ab")  # noqa: SIM115 (handed to the child)
    proc = subprocess.Popen(
        [sys.executable, "-m", "store", *args],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def cluster_up(
    directory: Path,
    osds: int = 3,
    port: int | None = None,
    osd_grace: float = 20.0,
    wait: float = 60.0,
    metrics: int | None = None,
    dashboard: int | None = None,
) -> Path:
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    tls_dir = directory / "tls"
    if not (tls_dir / tls.CA_CERT).exists():
        tls.init_ca(tls_dir)
    if not (tls_dir / "osd.crt").exists():
        tls.issue(tls_dir, "osd", role="osd")
    meta_file = directory / "cluster.json"
    meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    if port is None:
        port = meta.get("port") or free_port()
    meta.update(port=port, osds=max(osds, meta.get("osds", 0)))
    if metrics is not None:
        meta["metrics"] = metrics
    if dashboard is not None:
        meta["dashboard"] = dashboard
    meta_file.write_text(json.dumps(meta))
    master_addr = f"127.0.0.1:{port}"
    http: list[str] = []
    if meta.get("metrics"):
        http += ["--metrics", f"127.0.0.1:{meta['metrics']}"]
    if meta.get("dashboard"):
        http += ["--dashboard", f"127.0.0.1:{meta['dashboard']}"]
    _spawn(
        directory,
        "master",
        [
            "master",
            "--data-dir",
            str(directory / "master"),
            "--listen",
            master_addr,
            "--tls-dir",
            str(tls_dir),
            "--osd-grace",
            str(osd_grace),
            *http,
        ],
    )
    admin_key = directory / "master" / "admin.key"
    deadline = time.monotonic() + wait
    while not admin_key.exists():
        if time.monotonic() > deadline:
            raise click.ClickException(f"the master did not start: see {directory / 'master.log'}")
        time.sleep(0.1)
    for i in range(meta["osds"]):
        osd_dir = directory / f"osd.{i}"
        fresh = not osd_dir.exists()
        args = ["osd", "--dir", str(osd_dir), "--master", master_addr]
        if meta.get("metrics"):  # the master on the base port, osd.N on base + 1 + N
            args += ["--metrics", f"127.0.0.1:{meta['metrics'] + 1 + i}"]
        _spawn(directory, f"osd.{i}", [*args, "--listen", "127.0.0.1:0", "--tls-dir", str(tls_dir)])
        if fresh:  # one at a time, so that osd.N/ holds daemon N
            _wait_registered(osd_dir, directory / f"osd.{i}.log", deadline)
    conf = directory / "store.conf"
    staging = directory / "store.conf.new"
    write_config(staging, master=master_addr, ca=tls_dir / tls.CA_CERT, keyring=admin_key)
    trio.run(_settle, staging, meta["osds"], deadline)
    staging.replace(conf)
    return conf


def _wait_registered(osd_dir: Path, log: Path, deadline: float) -> None:
    identity = osd_dir / "identity.json"
    while True:
        try:
            if json.loads(identity.read_text()).get("osd_id") is not None:
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise click.ClickException(f"a daemon did not register with the master: see {log}")
        time.sleep(0.05)


async def _settle(conf: Path, osds: int, deadline: float) -> None:
    """Wait for the daemons to be up, make sure the `default` pool exists, wait for health."""
    config = load_config(conf)
    while True:
        try:
            async with trio.open_nursery() as nursery:
                link = await MasterLink.open(config, nursery)
                while sum(o.up for o in link.map.osds.values()) < osds:  # type: ignore[union-attr]
                    if time.monotonic() > deadline:
                        raise click.ClickException(
                            f"only some daemons came up: see the osd.*.log files in {conf.parent}"
                        )
                    await link.wait_for_map_change(0.5)
                try:
                    await link.call(
                        "pool_create", {"name": "default", "size": min(3, osds), "pg_num": 64}
                    )
                except RemoteError as exc:
                    if exc.message.find("exists") < 0:
                        raise
                # Then until every PG reports active+clean, so that the first
                # `store status` a user runs says HEALTH_OK.
                while time.monotonic() < deadline:
                    if summarize(await link.call("status"))["health"] == "HEALTH_OK":
                        break
                    await trio.sleep(0.3)
                nursery.cancel_scope.cancel()
            return
        except (StoreError, OSError):
            if time.monotonic() > deadline:
                raise
            await trio.sleep(0.3)


def cluster_down(directory: Path, timeout: float = 15.0) -> list[str]:
    stopped = []
    pid_files = sorted(directory.glob("osd.*.pid")) + sorted(directory.glob("master.pid"))
    for pid_file in pid_files:
        pid = _alive(pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid_file.stem)
    deadline = time.monotonic() + timeout
    for pid_file in pid_files:
        while _alive(pid_file) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        pid = _alive(pid_file)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
    return stopped


@click.group("cluster")
def cluster_group() -> None:
    """A local cluster for trying store out and for development."""


@cluster_group.command("up")
@click.option(
    "--dir", "directory", default="cluster", show_default=True, type=click.Path(path_type=Path)
)
@click.option("--osds", default=3, show_default=True, help="Storage daemons to run.")
@click.option(
    "--port",
    default=None,
    type=int,
    help="Master port (default: a free one, kept across restarts).",
)
@click.option(
    "--osd-grace",
    default=20.0,
    show_default=True,
    help="Seconds of silence before a daemon is marked down.",
)
@click.option(
    "--metrics",
    default=None,
    type=click.IntRange(1, 65000),
    metavar="PORT",
    help="Serve /metrics: the master on PORT, osd.N on PORT+1+N (kept across restarts).",
)
@click.option(
    "--dashboard",
    default=None,
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve the dashboard on https://127.0.0.1:PORT/ (kept across restarts).",
)
@click.option(
    "--foreground", is_flag=True, help="Stay in the foreground; Ctrl-C stops the cluster."
)
def up_command(
    directory: Path,
    osds: int,
    port: int | None,
    osd_grace: float,
    metrics: int | None,
    dashboard: int | None,
    foreground: bool,
) -> None:
    """Start (or restart) a local cluster: CA, master, daemons, admin key, pool `default`."""
    conf = cluster_up(directory, osds, port, osd_grace, metrics=metrics, dashboard=dashboard)
    click.echo(f"cluster running in {directory.resolve()}: master and {osds} daemons")
    meta = json.loads((directory.resolve() / "cluster.json").read_text())
    if meta.get("metrics"):
        click.echo(
            f"  metrics: http://127.0.0.1:{meta['metrics']}/metrics (master), next ports: daemons"
        )
    if meta.get("dashboard"):
        click.echo(
            f"  dashboard: https://127.0.0.1:{meta['dashboard']}/ (CA {directory}/tls/ca.crt; "
            f"log in as admin with the key in {directory}/master/admin.key)"
        )
    click.echo(f"  export STORE_CONF={conf}")
    click.echo(
        "  store status; store write --pool default hello --data-literal hi; "
        "store read --pool default hello"
    )
    click.echo(f"  store cluster down --dir {directory}")
    if foreground:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            click.echo("stopping")
            cluster_down(directory)


@cluster_group.command("down")
@click.option(
    "--dir", "directory", default="cluster", show_default=True, type=click.Path(path_type=Path)
)
def down_command(directory: Path) -> None:
    """Stop every process of a local cluster (data stays)."""
    stopped = cluster_down(directory)
    click.echo(f"stopped {', '.join(stopped) if stopped else 'nothing (not running)'}")
