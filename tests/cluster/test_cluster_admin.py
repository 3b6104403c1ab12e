"""Master state, keys, capabilities and certificates, against real processes."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store import auth, tls
from tests.cluster.harness import Cluster, wait_until


def test_master_restart_keeps_pools_keys_and_epochs(cluster: Cluster) -> None:
    cluster.cli("pool", "create", "images", "--size", "2", "--pg-num", "8")
    cluster.add_client("reader", ["default=r"])
    before = json.loads(cluster.cli("status", "--json").stdout)
    cluster.cli("write", "--pool", "default", "kept", "--data-literal", "still here")
    cluster.kill("master", signal.SIGKILL)
    cluster.start_master()
    after = json.loads(cluster.cli("status", "--json", check=False).stdout)
    assert after["fsid"] == before["fsid"]
    assert after["epoch"] >= before["epoch"]
    pools = {p["name"]: p for p in json.loads(cluster.cli("pool", "ls", "--json").stdout)}
    assert pools["images"]["size"] == 2 and pools["images"]["pg_num"] == 8
    assert "reader" in cluster.cli("auth", "ls").stdout.decode()
    # The old key still works after the restart, and so do the daemons.
    assert cluster.cli("read", "--pool", "default", "kept").stdout == b"still here"
    cluster.wait_healthy()


def test_read_only_client_cannot_write(cluster: Cluster) -> None:
    keyfile = cluster.add_client("viewer", ["default=r"])
    cluster.cli("write", "--pool", "default", "public", "--data-literal", "hello")
    assert (
        cluster.cli("read", "--pool", "default", "public", "--keyring", str(keyfile)).stdout
        == b"hello"
    )
    result = cluster.cli(
        "write",
        "--pool",
        "default",
        "public",
        "--data-literal",
        "defaced",
        "--keyring",
        str(keyfile),
        check=False,
    )
    assert result.returncode != 0
    assert "may not write to pool 'default'" in result.stderr.decode()
    assert cluster.cli("read", "--pool", "default", "public").stdout == b"hello"
    # Nor administer the cluster.
    result = cluster.cli("pool", "create", "mine", "--keyring", str(keyfile), check=False)
    assert result.returncode != 0 and "admin" in result.stderr.decode()


def test_wrong_secret_is_refused(cluster: Cluster) -> None:
    keyfile = cluster.add_client("someone", ["default=rw"])
    name, _ = auth.read_keyfile(keyfile)
    forged = cluster.root / "forged.key"
    auth.write_keyfile(forged, name, auth.new_secret())
    result = cluster.cli("ls", "--pool", "default", "--keyring", str(forged), check=False)
    assert result.returncode != 0
    assert "authentication of 'someone' failed" in result.stderr.decode()
    assert "refused authentication of client 'someone': wrong key" in cluster.log("master")


def test_daemon_with_a_certificate_from_another_ca_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca"
    tls.init_ca(other)
    tls.issue(other, "osd", role="osd")
    intruder_dir = tmp_path / "intruder"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "store",
            "osd",
            "--dir",
            str(intruder_dir),
            "--master",
            cluster.master_addr,
            "--tls-dir",
            str(other),
            "--host",
            "evil",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        time.sleep(4)
        osds = json.loads(cluster.cli("osd", "ls", "--json").stdout)
        assert len(osds) == 3, osds
        assert "evil" not in {o["host"] for o in osds}
        assert "TLS handshake failed" in cluster.log("master")
    finally:
        proc.kill()
        proc.wait()


def _peer_handshake(port: int, tls_dir: Path, name: str) -> str:
    """Connect to a daemon's peer port with `name`'s certificate from `tls_dir` and say
    how it went: "refused" if the daemon closed the link, else "served"."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(tls_dir / f"{name}.crt", tls_dir / f"{name}.key")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as conn:
                # TLS 1.3: a refused client certificate is learnt on the first read.
                conn.sendall(b"\x00\x00\x00\x01\x80")
                conn.settimeout(3)
                return "served" if conn.recv(1) else "refused"
        except (ssl.SSLError, ConnectionError):
            return "refused"
        except TimeoutError:
            return "served"


def test_peer_port_admits_only_daemons_of_this_cluster(cluster: Cluster, tmp_path: Path) -> None:
    port = cluster.osd_ports[0]
    other = tmp_path / "other-ca"
    tls.init_ca(other)
    tls.issue(other, "osd", role="osd")
    assert _peer_handshake(port, other, "osd") == "refused"
    # The client may learn of the refusal before the daemon has written its log line.
    wait_until(
        lambda: "refused a peer connection" in cluster.log("osd.0"), "the refusal logged", 10
    )
    # A certificate of this cluster, but not a daemon's.
    assert _peer_handshake(port, cluster.tls_dir, "master") == "refused"
    wait_until(lambda: "not a daemon certificate" in cluster.log("osd.0"), "the refusal logged", 10)
    # Bytes that are not TLS at all.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" * 50)
        raw.settimeout(10)
        try:
            while raw.recv(4096):
                pass
        except ConnectionError:
            pass
    # The daemon still replicates: a write needs all three copies.
    data = bytes(range(256)) * 4096
    source = tmp_path / "one-mib"
    source.write_bytes(data)
    cluster.cli("write", "--pool", "default", "after-intruders", "--data-file", str(source))
    out = tmp_path / "back"
    cluster.cli("read", "--pool", "default", "after-intruders", "-o", str(out))
    assert out.read_bytes() == data


def test_a_non_empty_directory_without_identity_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "store",
            "osd",
            "--dir",
            str(precious),
            "--master",
            cluster.master_addr,
            "--tls-dir",
            str(cluster.tls_dir),
        ],
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "is not empty and holds no identity.json" in result.stderr.decode()
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("size,min_size", [(3, 2)])
def test_writes_need_min_size_copies_reads_do_not(
    cluster: Cluster, size: int, min_size: int
) -> None:
    cluster.cli("write", "--pool", "default", "before", "--data-literal", "x")
    cluster.kill("osd.1")
    cluster.kill("osd.2")
    # Only one of three up: below min_size. Reads still work, writes are refused clearly.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        osds = json.loads(cluster.cli("osd", "ls", "--json").stdout)
        if sum(o["up"] for o in osds) == 1:
            break
        time.sleep(0.5)
    assert cluster.cli("read", "--pool", "default", "before", "--timeout", "20").stdout == b"x"
    result = cluster.cli(
        "write", "--pool", "default", "during", "--data-literal", "y", "--timeout", "5", check=False
    )
    assert result.returncode != 0
    assert "min_size" in result.stderr.decode()


def test_pool_settings_reject_bad_values(cluster: Cluster) -> None:
    for key, value in [("encrypt", "banana"), ("pg_num", "12"), ("pg_num", "8"), ("size", "x")]:
        result = cluster.cli("pool", "set", "default", key, value, check=False)
        assert result.returncode != 0, (key, value)
        assert key in result.stderr.decode(), result.stderr
    pools = json.loads(cluster.cli("pool", "ls", "--json").stdout)
    assert pools[0]["encrypt"] is True and pools[0]["pg_num"] == 16
