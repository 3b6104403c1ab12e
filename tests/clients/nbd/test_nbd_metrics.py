"""Metrics, health and configuration of the NBD gateway.

`store nbd serve --config FILE --metrics HOST:PORT` hands the address to the plugin, whose
trio thread serves /metrics, /healthz, /readyz and /config. A known workload of qemu-io
and nbdinfo must move the request counters by exactly what it asked for. The systemd unit
and the example configuration must agree with the command; the pure parts (parameters,
result labels, counters) are checked without nbdkit at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from store.errors import ClientTimeout, Code, ConfigError, RemoteError
from store.gateways.nbd.cli import nbdkit_command
from store.gateways.nbd.errors import WriteRefused, result_name
from store.gateways.nbd.process import document_from_environment, plugin_document
from store.gateways.nbd.settings import SettingsBuilder
from store.metrics.nbd import NbdStats
from tests.clients.nbd.conftest import QemuIo, Serve, new_image, run
from tests.cluster.harness import Cluster, free_port
from tests.metric_samples import Samples, parse_samples, value

REPO = Path(__file__).resolve().parents[3]
KiB, MiB = 1 << 10, 1 << 20


def get(address: str, path: str) -> tuple[int, bytes]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape(address: str) -> Samples:
    status, body = get(address, "/metrics")
    assert status == 200, body
    return parse_samples(body.decode())


def wait_for_metric(address: str, name: str, wanted: float, **labels: str) -> Samples:
    """Scrape until `name{labels}` has the wanted value: nbdkit closes a connection a
    moment after its client has gone."""
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(address)
        if value(samples, name, **labels) == wanted:
            return samples
        assert time.monotonic() < deadline, f"{name}{labels} never became {wanted}"
        time.sleep(0.05)


def store_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "store", *args], capture_output=True, text=True, timeout=60
    )


def test_metrics_health_and_config_of_a_served_image(
    nbd_cluster: Cluster, serve: Serve, short_dir: Path, qemu_io: Callable[[str], QemuIo]
) -> None:
    image = new_image(nbd_cluster, "metered", "32M")
    settings = short_dir / "metered.toml"
    settings.write_text('lease = 20.0\ntimeout = 15.0\nlog-format = "json"\n')
    address = f"127.0.0.1:{free_port()}"
    server = serve(image, "--config", str(settings), "--metrics", address)
    assert get(address, "/healthz") == (200, b"ok\n")
    assert get(address, "/readyz") == (200, b"ready\n")

    # A writer holds the lock while it is connected.
    before = scrape(address)
    holder = qemu_io(server.uri)
    holder.send("write -P 0x11 8M 4k")
    during = wait_for_metric(address, "store_nbd_requests_total", 1, request="pwrite", result="ok")
    assert value(during, "store_nbd_writer_lock_held") == 1
    assert value(during, "store_nbd_connections", mode="writable") == 1
    holder.finish()
    wait_for_metric(address, "store_nbd_connections", 0, mode="writable")
    # The lock is released once the connection is gone: a write to the cluster, a
    # moment later.
    wait_for_metric(address, "store_nbd_writer_lock_held", 0)

    start = scrape(address)
    commands = [
        "write -P 0x5a 0 64k",
        "write -P 0x5b 4M 128k",  # a second object
        "read -P 0x5a 0 64k",
        "write -z 1M 64k",
        "discard 2M 32k",
        "flush",
    ]
    out = run("qemu-io", "-f", "raw", *[a for c in commands for a in ("-c", c)], server.uri).stdout
    assert "Pattern verification failed" not in out, out
    run("nbdinfo", "--map", server.uri)
    end = wait_for_metric(address, "store_nbd_connections", 0, mode="writable")

    def moved(name: str, **labels: str) -> float:
        return value(end, name, **labels) - value(start, name, **labels)

    exact = Counter({"pwrite": 2, "pread": 1, "zero": 1, "trim": 1})
    for request, n in exact.items():
        assert moved("store_nbd_requests_total", request=request, result="ok") == n, request
        assert moved("store_nbd_request_latency_seconds_count", request=request) == n
    assert moved("store_nbd_requests_total", request="flush", result="ok") >= 1
    assert moved("store_nbd_requests_total", request="extents", result="ok") >= 1
    assert moved("store_nbd_request_bytes_total", request="pwrite") == 192 * KiB
    assert moved("store_nbd_request_bytes_total", request="pread") == 64 * KiB
    assert moved("store_nbd_request_bytes_total", request="zero") == 64 * KiB
    assert moved("store_nbd_request_bytes_total", request="trim") == 32 * KiB
    failed = [k for k in end if k[0] == "store_nbd_requests_total" and ("result", "ok") not in k[1]]
    assert failed == [], failed
    # qemu-io and nbdinfo: one connection each, both writable (nbdkit is not read-only).
    assert moved("store_nbd_connections_opened_total", mode="writable", result="ok") == 2
    assert value(end, "store_nbd_image_size_bytes") == 32 * MiB
    assert value(end, "store_nbd_image_info", pool="rbd", image="metered") == 1
    # The cluster client underneath answered all of it.
    assert value(end, "store_client_requests_total") > value(before, "store_client_requests_total")
    assert value(end, "store_client_timeouts_total") == 0
    assert value(end, "store_client_map_epoch") >= 1

    # Its configuration: from the file, the command line and the defaults.
    shown = store_cli("config", "show", "--metrics", address, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["role"] == "nbd" and doc["command"] == "store nbd serve"
    assert doc["pid"] == server.pid  # nbdkit took over the process of `store nbd serve`
    assert doc["config_file"] == str(settings.resolve())
    found = doc["settings"]
    assert found["lease"] == {"value": 20.0, "source": "config file"}
    assert found["timeout"] == {"value": 15.0, "source": "config file"}
    assert found["log-format"] == {"value": "json", "source": "config file"}
    assert found["metrics"] == {"value": address, "source": "command line"}
    assert found["unix"] == {"value": str(server.sock), "source": "command line"}
    assert found["readonly"] == {"value": False, "source": "default"}


def test_a_bad_metrics_address_stops_the_gateway_with_a_clear_error(
    nbd_cluster: Cluster, serve: Serve
) -> None:
    image = new_image(nbd_cluster, "unmetered", "16M")
    refused = store_cli("nbd", "serve", image, "--unix", "/tmp/x.sock", "--metrics", "nowhere")
    assert refused.returncode != 0 and "--metrics" in refused.stderr
    # A port taken by someone else: nbdkit stops before it serves anyone.
    with port_taken() as address:
        server = serve(image, "--metrics", address, ready=False)
        assert server.wait_exit() != 0
        assert f"cannot serve metrics on {address}" in server.log()


@contextlib.contextmanager
def port_taken() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_the_systemd_unit_and_the_example_configuration_agree(tmp_path: Path) -> None:
    """store-nbd@.service runs `store nbd serve --config /etc/store/nbd/%i.toml %I`; the
    example file must be one `store nbd serve` accepts, for the image the instance names."""
    unit = (REPO / "contrib" / "systemd" / "store-nbd@.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    args = shlex.split(exec_start.removeprefix("ExecStart="))
    assert args[:3] == ["/usr/bin/store", "nbd", "serve"]
    # systemd-escape rbd/vm1 is rbd-vm1: %i is the escaped instance, %I the image.
    folder = tmp_path / "etc-store-nbd"
    folder.mkdir()
    example = (REPO / "contrib" / "config" / "nbd.toml").read_text()
    (folder / "rbd-vm1.toml").write_text(example)
    command = [
        a.replace("/etc/store/nbd/%i.toml", str(folder / "rbd-vm1.toml")).replace("%I", "rbd/vm1")
        for a in args[3:]
    ]
    assert command == ["--config", str(folder / "rbd-vm1.toml"), "rbd/vm1"]
    shown = store_cli("config", "show", "--json", "--", "nbd", "serve", *command)
    assert shown.returncode == 0, shown.stderr
    found = json.loads(shown.stdout)["settings"]
    assert found["port"] == {"value": 10809, "source": "config file"}
    assert found["metrics"] == {"value": "0.0.0.0:9112", "source": "config file"}
    assert found["conf"] == {"value": "/etc/store/store.conf", "source": "config file"}
    # The nbdkit command it would run passes the metrics address on to the plugin.
    conf = tmp_path / "store.conf"
    conf.write_text("")
    (folder / "rbd-vm1.toml").write_text(example.replace("/etc/store/store.conf", str(conf)))
    dry = store_cli("nbd", "serve", *command, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    first, _, command_line = dry.stdout.splitlines()
    assert (
        first == "# clients connect to the relay (port 10809 on 0.0.0.0); nbdkit serves the relay:"
    )
    words = shlex.split(command_line)
    assert "metrics=0.0.0.0:9112" in words and "image=rbd/vm1" in words
    assert "parallel=true" in words and "--port" not in words
    # Without the relay, nbdkit listens itself and serves one request at a time.
    alone = store_cli("nbd", "serve", *command, "--no-relay", "--dry-run")
    words = shlex.split(alone.stdout)
    assert words[words.index("--port") + 1] == "10809" and "parallel=true" not in words


# --- the pure parts: parameters, result labels, counters, the configuration document ------


def test_metrics_and_log_format_parameters() -> None:
    builder = SettingsBuilder()
    for key, given in {"image": "rbd/x", "metrics": "127.0.0.1:9112", "log-format": "json"}.items():
        builder.set(key, given)
    settings = builder.build()
    assert (settings.metrics, settings.log_format) == ("127.0.0.1:9112", "json")
    described = builder.described()
    assert described["metrics"] == {"value": "127.0.0.1:9112", "source": "nbdkit parameter"}
    assert described["timeout"] == {"value": None, "source": "default"}
    for key, given, message in [
        ("metrics", "nowhere", "metrics=nowhere: expected HOST:PORT"),
        ("metrics", "host:99999", "port out of range"),
        ("log-format", "xml", "log-format=xml: give one of human, json"),
    ]:
        bad = SettingsBuilder()
        bad.set("image", "rbd/x")
        bad.set(key, given)
        with pytest.raises(ConfigError, match=message):
            bad.build()
    args = nbdkit_command(
        Path("/p.py"), "rbd/x", conf=Path("/c"), metrics="0.0.0.0:9112", log_format="json"
    )
    assert args[-2:] == ["metrics=0.0.0.0:9112", "log-format=json"]
    assert "log-format=human" not in nbdkit_command(Path("/p.py"), "rbd/x", conf=Path("/c"))


def test_result_labels_are_the_errnos_clients_get() -> None:
    assert result_name(RemoteError(Code.ENOSPC, "full")) == "enospc"
    assert result_name(WriteRefused("read-only")) == "eperm"
    assert result_name(ClientTimeout("slow")) == "eio"
    assert result_name(ExceptionGroup("g", [RemoteError(Code.EPERM, "caps")])) == "eperm"
    assert result_name(ValueError("bug")) == "eio"


async def test_cancelled_requests_have_their_own_label() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.sleep(1)
        except trio.Cancelled as exc:
            assert result_name(exc) == "cancelled"
            raise


def test_bytes_count_only_for_requests_that_succeeded() -> None:
    stats = NbdStats()
    stats.answered("pwrite", "ok", 0.002, 4096)
    stats.answered("pwrite", "enospc", 0.001, 4096)
    stats.answered("flush", "ok", 0.01, 0)
    assert stats.requests == {("pwrite", "ok"): 1, ("pwrite", "enospc"): 1, ("flush", "ok"): 1}
    assert stats.bytes == {"pwrite": 4096}
    assert stats.latency["pwrite"].count == 2 and stats.latency["pread"].count == 0


def test_the_document_store_nbd_serve_leaves_is_checked() -> None:
    good = {"role": "nbd", "command": "store nbd serve", "pid": 1, "settings": {}}
    doc = document_from_environment(json.dumps(good))
    assert doc is not None and doc["pid"] == os.getpid() and doc["command"] == "store nbd serve"
    for junk in (
        None,
        "",
        "{not json",
        "[1, 2]",
        '{"settings": 3}',
        json.dumps(good) + " " * 70_000,
    ):
        assert document_from_environment(junk) is None
    own = plugin_document({"image": {"value": "rbd/x", "source": "nbdkit parameter"}})
    assert own["role"] == "nbd" and own["config_file"] is None
