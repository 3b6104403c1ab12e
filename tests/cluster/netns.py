"""Several hosts on one machine: network namespaces joined to the root namespace by veth pairs.

Each host is a namespace with one veth pair to the root namespace and a /30 of its own out of
10.231.X.0/24 (X random, and not already in use here): the root end takes .4i+1, the host end
.4i+2. A host's default route points at its root end. Host-to-host traffic (replication) is
routed through the root namespace, so forwarding is switched on for our root-side interfaces
only (`net.ipv4.conf.IF.forwarding`); the global `ip_forward` switch is left alone, and the
setting disappears with the interface.

The master runs in the root namespace on all addresses; each daemon reaches it at its own
root-side address, which the master certificate names. Clients in the root namespace reach the
daemons at their namespace addresses, which is what the daemons advertise.

Everything is torn down in `NetnsLab.destroy()`, which never raises: kill the processes first
(a namespace lives on while a process is in it), then delete the namespaces and veth pairs.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from store import tls
from tests.cluster.harness import Cluster

OSD_PORT = 6800  # every host has its own port space, so every daemon can use the same port


def require_netns() -> None:
    """Skip (or, in CI, fail) when this process cannot create network namespaces."""
    problem = None
    if os.geteuid() != 0:
        problem = "creating network namespaces needs root"
    elif shutil.which("ip") is None:
        problem = "the `ip` command (iproute2) is not installed"
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{problem}; CI must run the netns tests")
    pytest.skip(problem)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _subnets_in_use() -> str:
    result = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True)
    return result.stdout.decode(errors="replace")


@dataclass(frozen=True)
class Host:
    name: str  # failure domain, e.g. "host1"
    netns: str
    root_if: str
    host_if: str
    root_ip: str  # the root namespace's end of the pair: the host's gateway
    host_ip: str  # the address inside the namespace


class NetnsLab:
    """`count` hosts as network namespaces, made by `create()` and removed by `destroy()`."""

    def __init__(self, count: int = 3, rng: random.Random | None = None) -> None:
        if not 1 <= count <= 63:
            raise ValueError("a /24 holds at most 63 hosts of a /30 each")
        rng = rng or random.Random()
        tag = f"{rng.getrandbits(24):06x}"
        in_use = _subnets_in_use()
        free = [x for x in range(256) if f"10.231.{x}." not in in_use]
        if not free:
            raise RuntimeError("every 10.231.X.0/24 is in use on this machine")
        self.subnet = f"10.231.{rng.choice(free)}"
        self.hosts = [
            Host(
                name=f"host{i + 1}",
                netns=f"st-{tag}-h{i + 1}",
                root_if=f"st-{tag}-r{i + 1}",  # interface names have at most 15 characters
                host_if=f"st-{tag}-n{i + 1}",
                root_ip=f"{self.subnet}.{4 * i + 1}",
                host_ip=f"{self.subnet}.{4 * i + 2}",
            )
            for i in range(count)
        ]

    def create(self) -> None:
        for h in self.hosts:
            _ip("netns", "add", h.netns)
            _ip("link", "add", h.root_if, "type", "veth", "peer", "name", h.host_if)
            _ip("link", "set", h.host_if, "netns", h.netns)
            _ip("addr", "add", f"{h.root_ip}/30", "dev", h.root_if)
            _ip("link", "set", h.root_if, "up")
            Path(f"/proc/sys/net/ipv4/conf/{h.root_if}/forwarding").write_text("1\n")
            _ip("-n", h.netns, "link", "set", "lo", "up")
            _ip("-n", h.netns, "addr", "add", f"{h.host_ip}/30", "dev", h.host_if)
            _ip("-n", h.netns, "link", "set", h.host_if, "up")
            _ip("-n", h.netns, "route", "add", "default", "via", h.root_ip)

    def destroy(self) -> list[str]:
        """Remove what `create()` made, even half of it; returns what could not be removed."""
        leftovers = []
        for h in self.hosts:
            for args in (("link", "del", h.root_if), ("netns", "del", h.netns)):
                try:
                    _ip(*args)
                except (RuntimeError, OSError, subprocess.SubprocessError):
                    pass
        existing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        for h in self.hosts:
            if h.netns in existing:
                leftovers.append(h.netns)
            if h.root_if in links:
                leftovers.append(h.root_if)
        return leftovers


class NetnsCluster(Cluster):
    """A master in the root namespace and daemon i inside `lab.hosts[i]`."""

    def __init__(self, root: Path, lab: NetnsLab, **kwargs: float) -> None:
        super().__init__(root, **kwargs)
        self.lab = lab
        # Each daemon checks the master's certificate against the address it dials, its
        # host's gateway: make the certificate again with those addresses among its names.
        tls.init_ca(self.tls_dir, master_names=[h.root_ip for h in lab.hosts], force=True)
        tls.issue(self.tls_dir, "osd", role="osd")
        # Daemons reach the master from their namespaces, over their veth links.
        self.master_listen = f"0.0.0.0:{self.port}"

    def start_osd(self, i: int, *, host: str | None = None, extra: list[str] | None = None) -> None:
        h = self.lab.hosts[i]
        port = self.osd_ports.setdefault(i, OSD_PORT)
        name = f"osd.{i}"
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [
                *("ip", "netns", "exec", h.netns),
                *(sys.executable, "-m", "store", "osd"),
                *("--dir", str(self.root / name)),
                *("--master", f"{h.root_ip}:{self.port}"),
                *("--listen", f"{h.host_ip}:{port}"),
                *("--tls-dir", str(self.tls_dir)),
                *("--heartbeat", str(self.heartbeat)),
                *("--host", host or h.name),
                "-vv",
                *(extra or []),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
