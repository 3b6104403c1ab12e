"""`--config FILE` on the master and the daemons, and `store config show`.

The cluster's processes read part of their settings from TOML files (keys are flag names)
and get others as flags, which win. `store config show` must report each process's
effective settings and where each came from: from the running-config file a daemon
writes in its data directory, from a process's metrics port, and for a command line that
is not running.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, free_port

OSDS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("config")
    c = Cluster(root / "c")
    conf = root / "etc"
    conf.mkdir()
    try:
        (conf / "master.toml").write_text(
            "# the master's settings\n"
            "ticket-ttl = 1800.0\n"
            "key_rotation = 900.0\n"  # the underscore spelling works too
            "osd-grace = 9.0\n"  # the harness passes --osd-grace, which wins
            f'metrics = "127.0.0.1:{free_port()}"\n'
            'log-format = "json"\n'
        )
        c.start_master(["--config", str(conf / "master.toml")])
        for i in range(OSDS):
            port = free_port()
            c.metrics_ports[f"osd.{i}"] = port
            (conf / f"osd.{i}.toml").write_text(
                f'metrics = "127.0.0.1:{port}"\n'
                "full-ratio = 0.99\n"
                "nearfull-ratio = 0.98\n"
                "heartbeat = 5.0\n"  # overridden by the harness's --heartbeat
            )
            c.start_osd(i, extra=["--config", str(conf / f"osd.{i}.toml")])
            c.wait_registered(i)
        c.cli("pool", "create", "default", "--size", str(OSDS), "--pg-num", "8")
        c.wait_healthy()
        yield c
    finally:
        c.stop()


def store(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "store", *args], capture_output=True, text=True, timeout=60
    )


def settings(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    found = doc["settings"]
    assert isinstance(found, dict)
    return found


def test_show_a_running_master_from_its_data_directory(cluster: Cluster) -> None:
    shown = store("config", "show", "--dir", str(cluster.root / "master"))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.startswith("# running\n# effective configuration of `store master`")
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line}
    assert lines["ticket-ttl"].split("#")[1].strip() == "config file"
    assert "1800.0" in lines["ticket-ttl"]
    assert "900.0" in lines["key-rotation"] and lines["key-rotation"].endswith("# config file")
    assert "3.0" in lines["osd-grace"] and lines["osd-grace"].endswith("# command line")
    doc = json.loads(
        store("config", "show", "--dir", str(cluster.root / "master"), "--json").stdout
    )
    assert doc["role"] == "master" and doc["note"] == "running"
    assert settings(doc)["log-format"] == {"value": "json", "source": "config file"}
    assert doc["config_file"].endswith("master.toml")

    # What `show` prints is a configuration file the master accepts back, with the same values.
    again = cluster.root / "again.toml"
    again.write_text(text)
    resolved = store("config", "show", "--json", "--", "master", "--config", str(again))
    assert resolved.returncode == 0, resolved.stderr
    values = {k: v["value"] for k, v in settings(json.loads(resolved.stdout)).items()}
    assert values == {k: v["value"] for k, v in settings(doc).items()}


def test_json_log_lines(cluster: Cluster) -> None:
    lines = [line for line in cluster.log("master").splitlines() if line.strip()]
    assert len(lines) > 5
    for line in lines:
        event = json.loads(line)
        assert {"time", "level", "process", "logger", "message"} <= set(event)
        assert event["process"] == "master"
    assert any("booted" in json.loads(line)["message"] for line in lines)


def test_show_a_daemon_through_its_metrics_port(cluster: Cluster) -> None:
    address = f"127.0.0.1:{cluster.metrics_ports['osd.1']}"
    shown = store("config", "show", "--metrics", address, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    found = settings(doc)
    assert doc["role"] == "osd"
    assert found["full-ratio"] == {"value": 0.99, "source": "config file"}
    assert found["heartbeat"] == {"value": 0.5, "source": "command line"}
    assert found["cert-name"] == {"value": "osd", "source": "default"}
    # The daemon runs with them: its metrics say so.
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        assert "store_osd_full_ratio 0.99" in answer.read().decode()
    # And the same from the file in its data directory.
    on_disk = json.loads(
        store("config", "show", "--dir", str(cluster.root / "osd.1"), "--json").stdout
    )
    assert settings(on_disk) == found


def test_show_a_command_line_that_is_not_running(tmp_path: Path) -> None:
    (tmp_path / "osd.toml").write_text('dir = "disk1"\ntls-dir = "/etc/store/tls"\nverbose = 2\n')
    shown = store(
        "config",
        "show",
        "--json",
        "osd",
        "--config",
        str(tmp_path / "osd.toml"),
        "--master",
        "10.0.0.1:6789",
    )
    assert shown.returncode == 0, shown.stderr
    found = settings(json.loads(shown.stdout))
    # A relative path in a file is relative to the file.
    assert found["dir"] == {"value": str(tmp_path / "disk1"), "source": "config file"}
    assert found["tls-dir"]["value"] == "/etc/store/tls"
    assert found["master"] == {"value": "10.0.0.1:6789", "source": "command line"}
    assert found["verbose"] == {"value": 2, "source": "config file"}


def test_bad_configuration_files_are_refused_clearly(tmp_path: Path) -> None:
    bad_key = tmp_path / "bad-key.toml"
    bad_key.write_text('lisen = "0.0.0.0:6800"\n')
    result = store("osd", "--config", str(bad_key), "--dir", str(tmp_path / "d"), "--master", "x:1")
    assert result.returncode != 0
    assert "`lisen` is not a setting of this command" in result.stderr
    assert "listen" in result.stderr  # the message lists the keys there are
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    result = store("master", "--config", str(broken), "--data-dir", str(tmp_path / "m"))
    assert result.returncode != 0 and "not valid TOML" in result.stderr
    missing = store("master", "--config", str(tmp_path / "nope.toml"), "--data-dir", "m")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    nowhere = store("config", "show", "--dir", str(tmp_path))
    assert nowhere.returncode != 0 and "running-config.json" in nowhere.stderr
