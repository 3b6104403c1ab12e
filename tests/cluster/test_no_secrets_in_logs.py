"""No key or secret ever reaches a log line.

A cluster runs with every process at DEBUG level (and one daemon logging JSON), and is
put through everything that handles keys: clients created, used, refused with a wrong key
and removed, dashboard logins right and wrong, service keys rotating, daemons stopping.
Then every log — the daemons', the master's and the standard error of every command —
is searched for every secret the cluster holds or handed out (client keys, the service
keys in the master's database, the wrong keys tried), in every encoding store writes
keys in.
"""

from __future__ import annotations

import base64
import http.client
import signal
import sqlite3
import ssl
import time
import urllib.parse
from pathlib import Path

import msgpack

from store import auth
from tests.cluster.harness import Cluster


def encodings(secret: bytes) -> set[bytes]:
    b64 = base64.b64encode(secret)
    return {
        secret,
        b64,
        b64.rstrip(b"="),
        base64.urlsafe_b64encode(secret),
        secret.hex().encode(),
        secret.hex().upper().encode(),
        repr(secret)[2:-1].encode(),
    }


def dashboard_login(cluster: Cluster, name: str, key: str) -> int:
    context = ssl.create_default_context(cafile=str(cluster.tls_dir / "ca.crt"))
    context.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.dashboard_port, context=context)
    try:
        form = urllib.parse.urlencode({"name": name, "key": key})
        conn.request("POST", "/login", form, {"Content-Type": "application/x-www-form-urlencoded"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_no_secret_in_any_log(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c")
    stderr: list[bytes] = []

    def cli(*args: str, check: bool = True) -> None:
        stderr.append(cluster.cli(*args, check=check).stderr)

    wrong_keys: list[bytes] = []
    try:
        # Service keys rotate every few seconds, so several generations pass through.
        cluster.start_master(["--key-rotation", "4", "--ticket-ttl", "8"], dashboard=True)
        for i in range(3):
            extra = ["--log-format", "json"] if i == 2 else []
            cluster.start_osd(i, extra=extra)
            cluster.wait_registered(i)
        cli("pool", "create", "default", "--size", "3", "--pg-num", "8", "-vv")
        cluster.wait_healthy()

        writer = cluster.add_client("writer", ["default=rw"])
        cli("auth", "add", "printed", "--cap", "default=r", "-vv")  # key to stdout only
        for i in range(5):
            cli(
                "write",
                "--pool",
                "default",
                f"obj{i}",
                "--data-literal",
                f"v{i}",
                "-vv",
                "--keyring",
                str(writer),
            )
            cli("read", "--pool", "default", f"obj{i}", "-vv", "--keyring", str(writer))

        # A wrong key for an existing client, and a key for a client that does not exist.
        name, secret = auth.read_keyfile(writer)
        for who, wrong in (("writer", bytes(b ^ 0x5A for b in secret)), ("ghost", b"\x01" * 32)):
            wrong_keys.append(wrong)
            keyfile = tmp_path / f"wrong-{who}.key"
            auth.write_keyfile(keyfile, who, wrong)
            cli("status", "-vv", "--keyring", str(keyfile), check=False)

        admin = base64.b64encode(auth.read_keyfile(cluster.root / "master" / "admin.key")[1])
        assert dashboard_login(cluster, "admin", admin.decode()) == 303
        forged = base64.b64encode(b"\x07" * 32)
        wrong_keys.append(b"\x07" * 32)
        assert dashboard_login(cluster, "admin", forged.decode()) == 401
        assert dashboard_login(cluster, "writer", base64.b64encode(secret).decode()) == 401

        time.sleep(5)  # key rotations, ticket renewals
        cli("read", "--pool", "default", "obj0", "-vv", "--keyring", str(writer))
        cli("auth", "rm", "printed", "-vv")
        cli("auth", "ls", "-vv")
        for name in ("osd.0", "osd.1", "osd.2", "master"):
            cluster.kill(name, signal.SIGTERM)
    finally:
        cluster.stop()

    secrets: list[bytes] = [*wrong_keys]
    db = sqlite3.connect(cluster.root / "master" / "master.db")
    try:
        secrets += [row[0] for row in db.execute("SELECT secret FROM clients")]
        for (blob,) in db.execute("SELECT data FROM service_keys"):
            secrets += [key for _gen, key, _created in msgpack.unpackb(blob, raw=False)]
    finally:
        db.close()
    for keyfile in cluster.root.glob("*.key"):
        secrets.append(auth.read_keyfile(keyfile)[1])
    assert len(secrets) >= 7

    logs = {path.name: path.read_bytes() for path in cluster.root.glob("*.log")}
    logs.update({f"command {i} stderr": err for i, err in enumerate(stderr)})
    assert {"master.log", "osd.0.log", "osd.2.log"} <= set(logs)
    assert sum(len(text) for text in logs.values()) > 4_000, "the logs are suspiciously short"
    # What the test provoked was logged, without the keys.
    master = logs["master.log"].decode()
    assert "refused authentication of client 'writer': wrong key" in master
    assert "refused authentication of client 'ghost': unknown client" in master
    assert "refused dashboard login of 'admin'" in master
    assert "service key rotated" in master
    assert "master stopping" in master and "stopped" in logs["osd.1.log"].decode()
    for log_name, text in logs.items():
        assert b"[secret]" not in text, f"{log_name}: a secret was about to be logged"
        for secret in secrets:
            for form in encodings(secret):
                assert form not in text, f"{log_name} holds a secret ({len(secret)} bytes)"
