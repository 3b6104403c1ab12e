"""`store nbd serve`'s relay: nbdkit serves a connection's requests in parallel, and
clients that leave badly with requests in flight — reset, cut off in the middle of a
write, breaking the protocol — neither kill it nor reach the image with half a message.

Run against nbdkit 1.32 directly in its parallel model, the reset rounds below abort it
(``raw_send_socket: Assertion `sock >= 0' failed``)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.clients.gateway_process import alive, children_of
from tests.clients.nbd.conftest import NbdServer, Serve, new_image, run
from tests.cluster.harness import Cluster, free_port, scheduling_policies, wait_until

MiB = 1 << 20
REQUEST = struct.Struct(">IHHQQI")
REQUEST_MAGIC = 0x25609513
READ, WRITE = 0, 1


def open_session(server: NbdServer, size: int = 64 * MiB) -> socket.socket:
    """A bare NBD client: fixed newstyle, EXPORT_NAME, no zero padding."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(str(server.sock))
    greeting = receive(s, 18)
    assert greeting[:16] == b"NBDMAGICIHAVEOPT", greeting
    s.sendall(struct.pack(">I", 3) + b"IHAVEOPT" + struct.pack(">II", 1, 0))
    assert struct.unpack(">Q", receive(s, 10)[:8])[0] == size
    return s


def receive(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def reads(count: int) -> bytes:
    return b"".join(REQUEST.pack(REQUEST_MAGIC, 0, READ, i, i * MiB, MiB) for i in range(count))


def reset(s: socket.socket) -> None:
    """Close with a reset, as a killed client's kernel does when data is unread."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def digest(server: NbdServer, folder: Path) -> str:
    out = folder / f"back-{time.monotonic_ns()}.bin"
    run("nbdcopy", server.uri, str(out))
    value = hashlib.sha256(out.read_bytes()[: 16 * MiB]).hexdigest()
    out.unlink()
    return value


def test_clients_leaving_badly_neither_kill_nbdkit_nor_write_halves(
    nbd_cluster: Cluster, serve: Serve, tmp_path: Path
) -> None:
    image = new_image(nbd_cluster, "relayed", "64M")
    server = serve(image, "-v")  # the plugin's and the relay's information lines
    wait_until(lambda: "each connection's requests in parallel" in server.log(), "the log", 10)
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(16 * MiB))
    run("nbdcopy", str(source), server.uri)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()

    for round_ in range(40):
        s = open_session(server)
        s.sendall(reads(16))
        time.sleep(0.002 * (round_ % 6))
        if round_ % 4 == 1:
            # Half a write of ones over the data, then gone: it must never be applied.
            header = REQUEST.pack(REQUEST_MAGIC, 0, WRITE, 99, 2 * MiB, MiB)
            s.sendall(header + b"\xff" * (MiB // 2))
        elif round_ % 4 == 2:
            s.sendall(b"\xde\xad\xbe\xef" + bytes(24))  # not a request
        elif round_ % 4 == 3:
            s.recv(65536)  # some of a reply read, the rest left in flight
        reset(s)
        assert server.proc.poll() is None, f"nbdkit died in round {round_}:\n{server.log()}"

    time.sleep(1)
    assert server.proc.poll() is None, server.log()
    log = server.log()
    assert "Assertion" not in log
    assert "left in the middle of a message" in log
    assert "a request with a wrong magic number; ending its connection" in log
    # The image is as written, and new clients are served.
    assert digest(server, tmp_path) == expected
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M", server.uri)


def test_without_the_relay_requests_are_served_one_at_a_time(
    nbd_cluster: Cluster, serve: Serve, tmp_path: Path
) -> None:
    image = new_image(nbd_cluster, "unrelayed", "64M")
    server = serve(image, "--no-relay", "-v")
    wait_until(lambda: "each connection's requests one at a time" in server.log(), "the log", 10)
    run("qemu-io", "-f", "raw", "-c", "write -P 0x33 1M 1M", "-c", "read -P 0x33 1M 1M", server.uri)
    # The same hostile rounds: nbdkit faces the clients itself, but one request at a time.
    for _ in range(5):
        s = open_session(server)
        s.sendall(reads(16))
        reset(s)
    time.sleep(0.5)
    assert server.proc.poll() is None, server.log()
    run("qemu-io", "-f", "raw", "-c", "read -P 0x33 1M 1M", server.uri)


def test_relay_on_tcp_goes_with_nbdkit(nbd_cluster: Cluster, short_dir: Path) -> None:
    image = new_image(nbd_cluster, "relayed-tcp", "64M")
    port = free_port()
    log = open(short_dir / "tcp.log", "wb")  # noqa: SIM115 (handed to the child)
    proc = subprocess.Popen(
        [sys.executable, "-m", "store", "nbd", "serve", image, "--port", str(port),
         "--bind", "127.0.0.1", "--conf", str(nbd_cluster.conf)],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    log.close()
    try:
        wait_until(lambda: _greets(port), "the relay to greet on TCP", 30)
        info = run("nbdinfo", "--json", f"nbd://127.0.0.1:{port}")
        assert json.loads(info.stdout)["exports"][0]["export-size"] == 64 * MiB
        relays = sorted(children_of(proc.pid))
        assert len(relays) == 1, relays
        # SIGTERM to nbdkit alone (as systemd's stop does to the main process first): the
        # relay, which ignores SIGTERM, leaves when nbdkit has, and frees the port.
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        wait_until(lambda: not alive(relays[0]), "the relay to exit", 10)
        with socket.socket() as probe:
            # As a server would: connections of the run may linger in TIME_WAIT, but
            # nothing may listen on the port any more.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_relay_removes_its_unix_socket(nbd_cluster: Cluster, serve: Serve) -> None:
    server = serve(new_image(nbd_cluster, "relayed-unix", "16M"))
    assert server.sock.exists()
    server.stop()
    wait_until(lambda: not server.sock.exists(), "the socket to go", 10)


def test_relay_goes_when_nbdkit_is_killed(nbd_cluster: Cluster, serve: Serve) -> None:
    server = serve(new_image(nbd_cluster, "relayed-kill", "16M"))
    relays = sorted(children_of(server.pid))
    assert len(relays) == 1, relays
    # store.threadsched: nbdkit's threads and the relay do not preempt each other on wakeup.
    assert scheduling_policies(server.pid) == scheduling_policies(relays[0]) == {os.SCHED_BATCH}
    os.kill(server.pid, signal.SIGKILL)  # nbdkit alone, with no chance to clean up
    server.proc.wait(timeout=30)
    wait_until(lambda: not alive(relays[0]), "the relay to exit", 10)
    wait_until(lambda: not server.sock.exists(), "the socket to go", 10)


def _greets(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
            return s.recv(8) == b"NBDMAGIC"
        except OSError:
            return False


def test_relay_logs_json_lines_with_the_gateway(nbd_cluster: Cluster, serve: Serve) -> None:
    server = serve(new_image(nbd_cluster, "relayed-json", "16M"), "--log-format", "json")
    s = open_session(server, size=16 * MiB)
    s.sendall(reads(2) + b"\xde\xad\xbe\xef" + bytes(24))
    time.sleep(0.5)
    reset(s)

    def relay_line() -> dict[str, object] | None:
        for line in server.log().splitlines():
            if '"nbd relay"' in line:
                return dict(json.loads(line))
        return None

    wait_until(lambda: relay_line() is not None, "the relay's log line", 10)
    line = relay_line()
    assert line is not None and line["level"] == "warning"
    assert "a request with a wrong magic number" in str(line["message"])
