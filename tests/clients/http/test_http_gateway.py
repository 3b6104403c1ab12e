"""The HTTP gateway against a real cluster, through Python's http.client and urllib."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from store.client.config import write_config
from tests.clients.gateway_process import children_of
from tests.clients.http.conftest import MAX_OBJECT_SIZE, POOL, PUBLIC_POOL, TOKEN, Gateway
from tests.clients.http.support import Reply, call, path_of, scrape, settled
from tests.cluster.harness import Cluster, free_port_pair, wait_until
from tests.metric_samples import delta, value

pytestmark = pytest.mark.usefixtures("gateway")

STRIPE = 4 * 1024 * 1024


def store_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "store", *args], capture_output=True, text=True, timeout=60
    )


def test_health(gateway: Gateway) -> None:
    reply = call(gateway, "GET", "/healthz", token=None)
    assert (reply.status, reply.body) == (200, b"ok\n")


def test_put_get_head_delete_of_a_small_object(gateway: Gateway) -> None:
    path = path_of(POOL, "notes/hello.txt")
    created = call(gateway, "PUT", path, b"hello world")
    assert created.status == 201 and created.headers["location"] == path
    got = call(gateway, "GET", path)
    assert (got.status, got.body) == (200, b"hello world")
    assert got.headers["etag"] == created.headers["etag"]
    assert got.headers["content-type"] == "text/plain"  # guessed from the name at PUT
    assert got.headers["accept-ranges"] == "bytes" and "last-modified" in got.headers
    head = call(gateway, "HEAD", path)
    assert head.status == 200 and head.body == b"" and head.headers["content-length"] == "11"
    replaced = call(
        gateway, "PUT", path, b"second", {"Content-Type": "text/x-custom; charset=utf-8"}
    )
    assert replaced.status == 204 and replaced.headers["etag"] != created.headers["etag"]
    got = call(gateway, "GET", path)
    assert got.body == b"second" and got.headers["content-type"] == "text/x-custom; charset=utf-8"
    assert call(gateway, "DELETE", path).status == 204
    assert call(gateway, "GET", path).status == 404
    assert call(gateway, "HEAD", path).status == 404
    gone = call(gateway, "DELETE", path)
    assert gone.status == 404 and "no object 'notes/hello.txt'" in gone.text


@pytest.mark.parametrize("size", [0, 1, 50_000, 70_000, STRIPE, STRIPE + 1, 2 * STRIPE + 12345])
def test_sizes_round_trip(gateway: Gateway, size: int) -> None:
    data = random.Random(size).randbytes(size)
    path = path_of(POOL, f"sizes/{size}")
    assert call(gateway, "PUT", path, data, {"Content-Type": "application/x-test"}).status == 201
    got = call(gateway, "GET", path)
    assert got.status == 200 and got.headers["content-length"] == str(size)
    assert hashlib.sha256(got.body).digest() == hashlib.sha256(data).digest()
    assert got.headers["content-type"] == "application/x-test"


def test_overwrite_between_inline_and_striped(gateway: Gateway) -> None:
    path = path_of(POOL, "shape-shifter")
    big = random.Random(7).randbytes(STRIPE + 100)
    for data in (b"small", big, b"small again", big[::-1]):
        call(gateway, "PUT", path, data)
        assert call(gateway, "GET", path).body == data


def test_ranges(gateway: Gateway) -> None:
    data = random.Random(3).randbytes(2 * STRIPE + 1000)
    size = len(data)
    path = path_of(POOL, "ranged.bin")
    call(gateway, "PUT", path, data)
    cases = {
        "bytes=0-0": (0, 0),
        "bytes=100-199": (100, 199),
        f"bytes={STRIPE - 10}-{STRIPE + 10}": (STRIPE - 10, STRIPE + 10),  # across stripes
        "bytes=-500": (size - 500, size - 1),
        f"bytes={size - 5}-": (size - 5, size - 1),
        f"bytes=10-{size + 100}": (10, size - 1),
        f"bytes=-{size * 2}": (0, size - 1),
    }
    for header, (start, end) in cases.items():
        got = call(gateway, "GET", path, headers={"Range": header})
        assert got.status == 206, header
        assert got.headers["content-range"] == f"bytes {start}-{end}/{size}", header
        assert got.body == data[start : end + 1], header
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        got = call(gateway, "GET", path, headers={"Range": header})
        assert got.status == 416, header
        assert got.headers["content-range"] == f"bytes */{size}"
    for header in ("bytes=5-4", "bytes=0-1,5-6", "items=0-3", "bytes=x-y"):
        got = call(gateway, "GET", path, headers={"Range": header})
        assert got.status == 200 and len(got.body) == size, header
    head = call(gateway, "HEAD", path, headers={"Range": "bytes=10-19"})
    assert head.status == 206 and head.headers["content-length"] == "10" and head.body == b""
    small = path_of(POOL, "ranged-small")
    call(gateway, "PUT", small, b"0123456789")
    assert call(gateway, "GET", small, headers={"Range": "bytes=2-4"}).body == b"234"
    empty = path_of(POOL, "ranged-empty")
    call(gateway, "PUT", empty, b"")
    assert call(gateway, "GET", empty, headers={"Range": "bytes=0-"}).status == 416


def test_if_range(gateway: Gateway) -> None:
    path = path_of(POOL, "if-range")
    etag = call(gateway, "PUT", path, b"abcdefgh").headers["etag"]
    same = call(gateway, "GET", path, headers={"Range": "bytes=0-1", "If-Range": etag})
    assert (same.status, same.body) == (206, b"ab")
    other = call(gateway, "GET", path, headers={"Range": "bytes=0-1", "If-Range": '"1.1"'})
    assert (other.status, other.body) == (200, b"abcdefgh")


def test_conditional_reads(gateway: Gateway) -> None:
    path = path_of(POOL, "conditional")
    etag = call(gateway, "PUT", path, b"v1").headers["etag"]
    got = call(gateway, "GET", path, headers={"If-None-Match": etag})
    assert got.status == 304 and got.body == b"" and got.headers["etag"] == etag
    assert call(gateway, "GET", path, headers={"If-None-Match": f'"0.0", W/{etag}'}).status == 304
    assert call(gateway, "HEAD", path, headers={"If-None-Match": "*"}).status == 304
    assert call(gateway, "GET", path, headers={"If-None-Match": '"0.0"'}).status == 200
    assert call(gateway, "GET", path, headers={"If-Match": etag}).body == b"v1"
    assert call(gateway, "GET", path, headers={"If-Match": '"0.0"'}).status == 412
    assert call(gateway, "GET", path, headers={"If-Match": f"W/{etag}"}).status == 412  # strong
    last_modified = call(gateway, "HEAD", path).headers["last-modified"]
    assert call(gateway, "GET", path, headers={"If-Modified-Since": last_modified}).status == 304
    long_ago = "Mon, 01 Jan 2001 00:00:00 GMT"
    assert call(gateway, "GET", path, headers={"If-Modified-Since": long_ago}).status == 200
    assert call(gateway, "GET", path, headers={"If-Unmodified-Since": long_ago}).status == 412
    missing = path_of(POOL, "conditional-missing")
    assert call(gateway, "GET", missing, headers={"If-Match": "*"}).status == 412
    assert call(gateway, "GET", missing, headers={"If-None-Match": "*"}).status == 404


def test_conditional_writes(gateway: Gateway) -> None:
    path = path_of(POOL, "conditional-write")
    assert call(gateway, "PUT", path, b"first", {"If-None-Match": "*"}).status == 201
    refused = call(gateway, "PUT", path, b"second", {"If-None-Match": "*"})
    assert refused.status == 412
    etag = call(gateway, "HEAD", path).headers["etag"]
    assert call(gateway, "PUT", path, b"x", {"If-Match": '"0.0"'}).status == 412
    updated = call(gateway, "PUT", path, b"third", {"If-Match": etag})
    assert updated.status == 204
    assert call(gateway, "DELETE", path, headers={"If-Match": etag}).status == 412  # stale now
    assert call(gateway, "GET", path).body == b"third"
    assert (
        call(gateway, "DELETE", path, headers={"If-Match": updated.headers["etag"]}).status == 204
    )
    assert call(gateway, "PUT", path, b"new", {"If-Match": "*"}).status == 412


def test_a_refused_precondition_stops_the_upload_before_the_body(gateway: Gateway) -> None:
    path = path_of(POOL, "expect-continue")
    call(gateway, "PUT", path, b"exists")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(
            (
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                "If-None-Match: *\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n"
            ).encode()
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 412 ")  # and not "100 Continue"


def test_tokens_and_public_pools(gateway: Gateway) -> None:
    path = path_of(POOL, "guarded")
    put = call(gateway, "PUT", path, b"x", token=None)
    assert put.status == 401 and put.headers["www-authenticate"].startswith("Bearer")
    assert "needs a token" in put.text
    wrong = call(gateway, "PUT", path, b"x", token="not-the-token-at-all")
    assert wrong.status == 403 and "not valid" in wrong.text
    basic = call(gateway, "GET", path, headers={"Authorization": "Basic dXNlcjpwYXNz"}, token=None)
    assert basic.status == 401 and "Bearer <token>" in basic.text
    assert call(gateway, "PUT", path, b"x").status == 201
    assert call(gateway, "GET", path, token=None).status == 401  # pool not public
    assert call(gateway, "GET", f"/{POOL}/", token=None).status == 401
    assert call(gateway, "DELETE", path, token=None).status == 401
    public = path_of(PUBLIC_POOL, "open.txt")
    assert call(gateway, "PUT", public, b"for all", token=None).status == 401
    assert call(gateway, "PUT", public, b"for all").status == 201
    assert call(gateway, "GET", public, token=None).body == b"for all"
    assert call(gateway, "HEAD", public, token=None).status == 200
    assert call(gateway, "DELETE", public, token=None).status == 401
    listing = call(gateway, "GET", f"/{PUBLIC_POOL}/?format=json", token=None)
    assert [o["name"] for o in json.loads(listing.body)["objects"]] == ["open.txt"]
    # urllib, as a program would
    request = urllib.request.Request(f"{gateway.url}{public}")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read() == b"for all"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{gateway.url}{path}", timeout=30)
    assert refused.value.code == 401


def test_listing(gateway: Gateway) -> None:
    pool = PUBLIC_POOL
    names = ["tree/a/b/c.txt", "tree/a/d.txt", "tree/e.txt", "tree/sp ace/ü.txt", "tree/z/"]
    for name in names[:-1]:
        assert call(gateway, "PUT", path_of(pool, name), name.encode()).status == 201
    big = random.Random(1).randbytes(STRIPE + 5)
    call(gateway, "PUT", path_of(pool, "tree/big.bin"), big)

    def listing(path: str) -> dict[str, Any]:
        reply = call(gateway, "GET", path)
        assert reply.status == 200 and reply.headers["content-type"] == "application/json"
        result: dict[str, Any] = json.loads(reply.body)
        return result

    top = listing(f"/{pool}/tree/?format=json")
    assert top["prefix"] == "tree/" and top["delimiter"] == "/"
    assert top["directories"] == ["tree/a/", "tree/sp ace/"]
    assert top["objects"] == [
        {"name": "tree/big.bin", "size": len(big)},
        {"name": "tree/e.txt", "size": len("tree/e.txt")},
    ]
    assert not top["truncated"]
    assert listing(f"/{pool}/?prefix=tree/a/&format=json")["directories"] == ["tree/a/b/"]
    assert listing(f"/{pool}/tree/a/?format=json")["objects"] == [
        {"name": "tree/a/d.txt", "size": len("tree/a/d.txt")}
    ]
    by_accept = call(gateway, "GET", f"/{pool}/tree/", headers={"Accept": "application/json"})
    assert json.loads(by_accept.body)["directories"] == ["tree/a/", "tree/sp ace/"]
    # pages
    first = listing(f"/{pool}/tree/?format=json&limit=2")
    assert first["truncated"] and first["next_after"] == "tree/big.bin"
    assert first["directories"] == ["tree/a/"] and len(first["objects"]) == 1
    second = listing(f"/{pool}/tree/?format=json&limit=2&after=tree/big.bin")
    assert second["objects"] == [{"name": "tree/e.txt", "size": 10}]
    assert second["directories"] == ["tree/sp ace/"] and not second["truncated"]
    # HTML, for browsers
    page = call(gateway, "GET", f"/{pool}/tree/")
    assert page.headers["content-type"].startswith("text/html")
    assert '<a href="/pub/tree/sp%20ace/">sp ace/</a>' in page.text
    assert '<a href="/pub/tree/e.txt">e.txt</a>' in page.text
    assert '<a href="/pub/">../</a>' in page.text
    # the gateway's own objects never show
    everything = listing(f"/{pool}/?format=json&limit=10000")
    assert not any(name.startswith(".http") for name in everything["directories"])
    assert call(gateway, "GET", f"/{pool}/?format=xml").status == 400
    assert call(gateway, "GET", f"/{pool}", token=None).headers["location"] == f"/{pool}/"


def test_names_are_percent_decoded(gateway: Gateway) -> None:
    for name in ("with space", "ünïcødé/ß", "q?uestion#hash", "plus+sign", "100%"):
        path = path_of(POOL, name)
        assert call(gateway, "PUT", path, name.encode()).status == 201, name
        assert call(gateway, "GET", path).body == name.encode(), name
    listed = json.loads(call(gateway, "GET", f"/{POOL}/?format=json&limit=10000").body)
    names = {o["name"] for o in listed["objects"]} | set(listed["directories"])
    assert {"with space", "ünïcødé/", "q?uestion#hash", "plus+sign", "100%"} <= names


def test_bad_requests(gateway: Gateway) -> None:
    assert call(gateway, "GET", f"/{POOL}/bad%zzescape").status == 400
    assert call(gateway, "GET", f"/{POOL}/bad%FFutf8").status == 400
    assert call(gateway, "GET", f"/{POOL}/ctl%01char").status == 400
    assert call(gateway, "PUT", f"/{POOL}/dir/", b"x").status == 400
    post = call(gateway, "POST", f"/{POOL}/x", b"x")
    assert post.status == 405 and post.headers["allow"] == "GET, HEAD, PUT, DELETE"
    assert call(gateway, "GET", "/nosuchpool/x").status == 404
    assert "no pool named 'nosuchpool'" in call(gateway, "GET", "/nosuchpool/x").text
    assert call(gateway, "GET", "/").status == 404
    assert call(gateway, "GET", f"/{POOL}/.http/gc/0").status == 403
    assert call(gateway, "PUT", f"/{POOL}/.http/d/x/0", b"x").status == 403
    ranged = call(gateway, "PUT", f"/{POOL}/x", b"x", {"Content-Range": "bytes 0-0/1"})
    assert ranged.status == 400
    too_big = call(gateway, "PUT", f"/{POOL}/x", b"x", {"Content-Type": "bad\x7ftype"})
    assert too_big.status == 400
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(
            (
                f"PUT /{POOL}/huge HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Expect: 100-continue\r\nContent-Length: 999999999999\r\n\r\n"
            ).encode()
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01garbage\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    assert call(gateway, "GET", "/healthz").status == 200  # alive after all that


def test_plain_cluster_objects_are_served(gateway: Gateway, cluster: Cluster) -> None:
    cluster.cli("write", "--pool", POOL, "plain/from-cli.json", "--data-literal", '{"a": 1}')
    got = call(gateway, "GET", path_of(POOL, "plain/from-cli.json"))
    assert got.status == 200 and got.body == b'{"a": 1}'
    assert got.headers["content-type"] == "application/json"  # guessed from the name
    assert (
        call(
            gateway, "GET", path_of(POOL, "plain/from-cli.json"), headers={"Range": "bytes=1-3"}
        ).body
        == b'"a"'
    )
    big = random.Random(5).randbytes(3 * 1024 * 1024)
    cluster.cli("write", "--pool", POOL, "plain/big", "-", input=big)
    assert call(gateway, "GET", path_of(POOL, "plain/big")).body == big
    listed = json.loads(call(gateway, "GET", f"/{POOL}/plain/?format=json").body)
    assert {"name": "plain/big", "size": len(big)} in listed["objects"]
    # A plain write over an object the gateway striped: the plain bytes are the object now.
    striped = path_of(POOL, "plain/was-striped")
    call(gateway, "PUT", striped, random.Random(6).randbytes(STRIPE + 1))
    cluster.cli("write", "--pool", POOL, "plain/was-striped", "--data-literal", "overwritten")
    assert call(gateway, "GET", striped).body == b"overwritten"


def test_keep_alive_and_pipelining_through_the_gateway(gateway: Gateway) -> None:
    call(gateway, "PUT", path_of(POOL, "k1"), b"one")
    call(gateway, "PUT", path_of(POOL, "k2"), b"two")
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    request = "GET /{} HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall((request.format(f"{POOL}/k1") + request.format(f"{POOL}/k2")).encode())
        received = b""
        deadline = time.monotonic() + 30
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"two"):
            assert time.monotonic() < deadline, received
            received += sock.recv(65536)
    assert received.index(b"one") < received.index(b"two")


# --- metrics, health and configuration ---------------------------------------------------


def test_metrics_count_a_known_workload(gateway: Gateway) -> None:
    folder = f"metrics/{uuid.uuid4().hex}"
    payloads = {
        f"{folder}/small": b"0123456789",
        f"{folder}/inline": random.Random(7).randbytes(70_000),
        f"{folder}/striped": random.Random(8).randbytes(STRIPE + 5),  # streamed out
    }
    replies: list[tuple[str, Reply]] = []

    def send(method: str, name: str, body: bytes | None = None) -> Reply:
        reply = call(gateway, method, path_of(POOL, name), body)
        replies.append((method, reply))
        return reply

    before = settled(gateway)
    for name, data in payloads.items():
        assert send("PUT", name, data).status == 201
    for name, data in payloads.items():
        assert send("GET", name).body == data
    assert send("HEAD", f"{folder}/inline").status == 200
    assert send("GET", f"{folder}/missing").status == 404
    assert send("DELETE", f"{folder}/small").status == 204
    after = settled(gateway)

    def moved(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    for (method, status), n in Counter((m, r.status) for m, r in replies).items():
        assert moved("store_http_requests_total", method=method, status=str(status)) == n
    for method, n in Counter(m for m, _ in replies).items():
        assert moved("store_http_request_latency_seconds_count", method=method) == n
        assert moved("store_http_request_latency_seconds_bucket", method=method, le="+Inf") == n
    assert moved("store_http_body_bytes_total", direction="received") == sum(
        len(data) for data in payloads.values()
    )
    # Every byte of every answer's body: objects, "created" notes, the 404's reason.
    assert moved("store_http_body_bytes_total", direction="sent") == sum(
        len(r.body) for m, r in replies if m != "HEAD"
    )
    assert moved("store_http_requests_cut_short_total", stage="request") == 0
    assert moved("store_http_requests_cut_short_total", stage="response") == 0
    assert value(after, "store_http_requests_in_flight") == 0
    # The cluster client underneath: at least a write and a read per object, all answered.
    assert moved("store_client_requests_total") >= 2 * len(payloads)
    assert moved("store_client_replies_total", result="ok") >= 2 * len(payloads)
    assert moved("store_client_timeouts_total") == 0
    assert value(after, "store_client_map_epoch") >= 1
    assert value(after, "store_client_daemon_links") >= 1
    roles = [labels for (name, labels) in after if name == "store_build_info"]
    assert len(roles) == 1 and ("role", "http") in roles[0]


def test_health_readiness_and_config_of_the_gateway(gateway: Gateway) -> None:
    assert gateway.metrics_get("/healthz") == (200, b"ok\n")
    assert gateway.metrics_get("/readyz") == (200, b"ready\n")
    shown = store_cli("config", "show", "--metrics", gateway.metrics_address, "--json")
    assert shown.returncode == 0, shown.stderr
    assert TOKEN not in shown.stdout
    doc = json.loads(shown.stdout)
    assert doc["role"] == "http" and doc["command"] == "store http serve"
    assert gateway.config_path is not None
    assert doc["config_file"] == str(gateway.config_path.resolve())
    found = doc["settings"]
    assert found["max-object-size"] == {"value": MAX_OBJECT_SIZE, "source": "config file"}
    assert found["read-grace"] == {"value": 30.0, "source": "config file"}  # as read_grace
    assert found["log-format"] == {"value": "json", "source": "config file"}
    # The file's `listen` loses to the command line's.
    assert found["listen"] == {"value": f"127.0.0.1:{gateway.port}", "source": "command line"}
    assert found["metrics"] == {"value": gateway.metrics_address, "source": "command line"}
    assert found["public"] == {"value": [PUBLIC_POOL], "source": "command line"}
    assert found["gc-interval"] == {"value": 30.0, "source": "default"}
    text = store_cli("config", "show", "--metrics", gateway.metrics_address).stdout
    assert text.startswith("# effective configuration of `store http serve`")
    lines = {line.split(" = ")[0]: line for line in text.splitlines() if " = " in line}
    assert lines["max-object-size"].split("#")[1].strip() == "config file"
    # log-format = "json": every line of its log is a JSON object.
    events = gateway.log_lines()
    assert events and all(e["process"] == "http" for e in events)
    assert any(str(e["message"]).startswith("HTTP gateway ready") for e in events)


def test_not_ready_while_the_cluster_does_not_answer(cluster: Cluster, tmp_path: Path) -> None:
    """A master that accepts connections and never answers: /readyz says what is awaited."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        conf = tmp_path / "silent.conf"
        write_config(
            conf,
            master=f"127.0.0.1:{silent.getsockname()[1]}",
            ca=cluster.tls_dir / "ca.crt",
            keyring=cluster.root / "master" / "admin.key",
        )
        waiting = Gateway(cluster, tmp_path, "waiting", conf=conf)
        proc = waiting.launch()
        try:
            deadline = time.monotonic() + 30
            while waiting.metrics_get("/healthz")[0] != 200:
                assert proc.poll() is None, waiting.log()
                assert time.monotonic() < deadline, waiting.log()
                time.sleep(0.05)
            status, reason = waiting.metrics_get("/readyz")
            assert status == 503 and reason.startswith(b"connecting to the cluster"), reason
            assert scrape(waiting)[("store_http_requests_in_flight", frozenset())] == 0
        finally:
            waiting.kill()


def test_a_metrics_port_that_cannot_be_served_is_a_clear_error(cluster: Cluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        args = ["http", "serve", "--conf", str(cluster.conf), "--listen", "127.0.0.1:0"]
        refused = store_cli(*args, "--metrics", address)
    assert refused.returncode == 1
    assert f"cannot serve metrics on {address}: Address already in use" in refused.stderr
    malformed = store_cli(*args, "--metrics", "nowhere")
    assert malformed.returncode == 2 and "Invalid value for --metrics" in malformed.stderr


def test_workers_serve_one_port(cluster: Cluster, tmp_path: Path) -> None:
    gateway = Gateway(cluster, tmp_path, "workers", "--workers", "2", metrics_port=free_port_pair())
    try:
        gateway.start()
        assert gateway.proc is not None and len(children_of(gateway.proc.pid)) == 2
        # Worker 1's metrics port is the gateway's + 1: read it as a gateway of its own.
        second = Gateway(cluster, tmp_path, "second", metrics_port=gateway.metrics_port + 1)
        wait_until(second.ready, "worker 1 ready")
        for i in range(30):  # a connection each: the kernel spreads them over the workers
            path = path_of(POOL, f"workers/{i}")
            assert call(gateway, "PUT", path, b"%d" % i).status in (201, 204)
            assert call(gateway, "GET", path).body == b"%d" % i
        requests = "store_http_requests_total"
        for worker in (gateway, second):
            assert sum(v for (name, _), v in scrape(worker).items() if name == requests) > 0
    finally:
        gateway.kill()
