"""The HTTP gateway with curl, big streams, concurrent writers and crashes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import trio

from store import tls
from store.client.api import Client
from tests.clients.http.conftest import POOL, PUBLIC_POOL, TOKEN, Gateway
from tests.clients.http.support import call, path_of, scrape
from tests.cluster.harness import Cluster, wait_until
from tests.metric_samples import value

MiB = 1024 * 1024
GatewayFactory = Callable[..., Gateway]


def run_curl(
    curl: str, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [curl, "--silent", "--show-error", *args], capture_output=True, input=input, timeout=300
    )


def auth() -> list[str]:
    return ["-H", f"Authorization: Bearer {TOKEN}"]


def stripe_uploads(cluster: Cluster) -> set[str]:
    """The upload ids that have stripes in the pool, as the cluster itself lists them."""

    async def listing() -> list[tuple[str, int]]:
        async with Client.connect(cluster.config()) as client:
            return await client.ls(POOL, ".http/d/")

    return {name.split("/")[2] for name, _ in trio.run(listing)}


def test_curl_put_get_ranges_and_errors(gateway: Gateway, curl: str, tmp_path: Path) -> None:
    url = f"{gateway.url}/{POOL}/curl/hello.txt"
    source = tmp_path / "hello.txt"
    source.write_bytes(b"hello from curl\n")
    put = run_curl(curl, "--fail", "-T", str(source), *auth(), "-w", "%{http_code}", url)
    assert put.returncode == 0 and put.stdout.endswith(b"201"), put.stderr
    got = run_curl(curl, "--fail", *auth(), url)
    assert got.stdout == b"hello from curl\n"
    ranged = run_curl(curl, "--fail", "-r", "6-9", *auth(), url)
    assert ranged.stdout == b"from"
    head = run_curl(curl, "--fail", "-I", *auth(), url)
    assert b"Content-Length: 16" in head.stdout and b"ETag: " in head.stdout
    denied = run_curl(curl, "--fail", "-T", str(source), url)
    assert denied.returncode == 22 and b"401" in denied.stderr
    body = run_curl(
        curl, "-T", str(source), "-H", "Authorization: Bearer wrong-token-wrong-token", url
    )
    assert b"not valid" in body.stdout
    deleted = run_curl(curl, "--fail", "-X", "DELETE", *auth(), "-w", "%{http_code}", url)
    assert deleted.stdout == b"204"


def test_curl_chunked_upload_from_stdin(gateway: Gateway, curl: str) -> None:
    data = os.urandom(5 * MiB + 17)
    url = f"{gateway.url}/{POOL}/curl/chunked.bin"
    put = run_curl(curl, "--fail", "-T", "-", *auth(), url, input=data)  # stdin: chunked
    assert put.returncode == 0, put.stderr
    assert run_curl(curl, "--fail", *auth(), url).stdout == data
    small = run_curl(curl, "--fail", "-T", "-", *auth(), url + ".small", input=b"tiny")
    assert small.returncode == 0
    assert run_curl(curl, "--fail", *auth(), url + ".small").stdout == b"tiny"


def test_64_mib_streams_both_ways_in_bounded_memory(
    gateway_factory: GatewayFactory, curl: str, tmp_path: Path
) -> None:
    gateway = gateway_factory()
    source, copy = tmp_path / "big.bin", tmp_path / "copy.bin"
    digest = hashlib.sha256()
    with source.open("wb") as out:
        for _ in range(64):
            block = os.urandom(MiB)
            digest.update(block)
            out.write(block)
    url = f"{gateway.url}/{POOL}/big/64mib.bin"
    warm = run_curl(curl, "--fail", "-T", "-", *auth(), url + ".warm", input=os.urandom(6 * MiB))
    assert warm.returncode == 0
    assert run_curl(curl, "--fail", "-o", str(copy), *auth(), url + ".warm").returncode == 0
    before = gateway.peak_memory_kib()
    put = run_curl(curl, "--fail", "-T", str(source), *auth(), url)
    assert put.returncode == 0, put.stderr
    got = run_curl(curl, "--fail", "-o", str(copy), *auth(), url)
    assert got.returncode == 0, got.stderr
    assert copy.stat().st_size == 64 * MiB
    with copy.open("rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == digest.hexdigest()
    grown = (gateway.peak_memory_kib() - before) * 1024
    assert grown < 32 * MiB, f"the gateway's peak memory grew by {grown} bytes for 64 MiB"
    listed = json.loads(call(gateway, "GET", f"/{POOL}/big/?format=json").body)
    assert {"name": "big/64mib.bin", "size": 64 * MiB} in listed["objects"]


def test_concurrent_puts_of_one_name_never_mix(gateway: Gateway) -> None:
    path = path_of(POOL, "race/object")
    size = 6 * MiB
    versions: dict[str, int] = {}

    def version(writer: int, round_: int) -> bytes:
        seed = hashlib.sha256(f"{writer}.{round_}".encode()).digest()
        return seed * (size // len(seed))

    for writer in range(3):
        for round_ in range(3):
            versions[hashlib.sha256(version(writer, round_)).hexdigest()] = writer
    call(gateway, "PUT", path, version(0, 0))
    failures: list[str] = []
    reads = 0
    writing = threading.Event()
    writing.set()

    def write(writer: int) -> None:
        for round_ in range(3):
            reply = call(gateway, "PUT", path, version(writer, round_))
            if reply.status not in (201, 204):
                failures.append(f"PUT {writer}.{round_}: {reply}")

    def read() -> None:
        nonlocal reads
        while writing.is_set():
            reply = call(gateway, "GET", path)
            reads += 1
            if reply.status != 200:
                failures.append(f"GET: {reply}")
            elif hashlib.sha256(reply.body).hexdigest() not in versions:
                failures.append(f"GET returned a mix ({len(reply.body)} bytes)")

    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join(timeout=300)
    writing.clear()
    for thread in readers:
        thread.join(timeout=300)
    assert not failures, failures[:5]
    assert reads >= 2
    final = call(gateway, "GET", path)
    assert hashlib.sha256(final.body).hexdigest() in versions


def test_kill_9_mid_put_leaves_no_partial_object_and_data_is_collected(
    gateway: Gateway, gateway_factory: GatewayFactory, cluster: Cluster
) -> None:
    path = path_of(POOL, "crash/victim")
    old = os.urandom(5 * MiB)
    assert call(gateway, "PUT", path, old).status == 201
    doomed = gateway_factory("--upload-lease", "1")
    known = stripe_uploads(cluster)
    size = 32 * MiB
    sock = socket.create_connection(("127.0.0.1", doomed.port), timeout=30)
    try:
        sock.sendall(
            (
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Length: {size}\r\n\r\n"
            ).encode()
        )
        block = os.urandom(MiB)
        for _ in range(12):
            sock.sendall(block)
        wait_until(lambda: bool(stripe_uploads(cluster) - known), "the upload's first stripes")
        new = stripe_uploads(cluster) - known
        doomed.kill()
    finally:
        sock.close()
    # Readers see the old object, whole, through another gateway.
    got = call(gateway, "GET", path)
    assert got.status == 200 and got.body == old
    # A gateway started afterwards works at once and collects the orphaned stripes.
    successor = gateway_factory("--gc-interval", "0.3", "--read-grace", "0")
    assert call(successor, "GET", path).body == old
    assert call(successor, "PUT", path_of(POOL, "crash/after"), b"works").status == 201
    wait_until(lambda: not (stripe_uploads(cluster) & new), "the orphaned stripes to go")
    assert call(successor, "GET", path).body == old  # referenced stripes stay


def test_replaced_and_abandoned_stripes_are_collected(
    gateway_factory: GatewayFactory, cluster: Cluster
) -> None:
    gateway = gateway_factory("--gc-interval", "0.3", "--read-grace", "0")
    path = path_of(POOL, "collect/object")

    def put_and_find_upload(data: bytes) -> set[str]:
        known = stripe_uploads(cluster)
        assert call(gateway, "PUT", path, data).status in (201, 204)
        new = stripe_uploads(cluster) - known
        assert len(new) == 1
        return new

    first = put_and_find_upload(os.urandom(5 * MiB))
    second_data = os.urandom(5 * MiB)
    second = put_and_find_upload(second_data)
    wait_until(lambda: not (stripe_uploads(cluster) & first), "replaced stripes to go")
    assert second <= stripe_uploads(cluster)
    assert call(gateway, "GET", path).body == second_data
    # A client that disconnects mid-upload: its stripes go too.
    known = stripe_uploads(cluster)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(
            (
                f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Length: {20 * MiB}\r\n\r\n"
            ).encode()
            + os.urandom(6 * MiB)
        )
        wait_until(lambda: bool(stripe_uploads(cluster) - known), "the upload's first stripes")
        started = stripe_uploads(cluster) - known
    wait_until(lambda: not (stripe_uploads(cluster) & started), "abandoned stripes to go")
    assert call(gateway, "GET", path).body == second_data
    # Its metrics saw the upload its client cut short. (Which gateway collected the
    # stripes is not known: every gateway of the module collects the pool.)
    samples = scrape(gateway)
    assert value(samples, "store_http_requests_cut_short_total", stage="request") == 1
    # Deleting an object frees its stripes.
    assert call(gateway, "DELETE", path).status == 204
    wait_until(lambda: not (stripe_uploads(cluster) & second), "deleted stripes to go")


def test_two_gateways_serve_the_same_objects(
    gateway: Gateway, gateway_factory: GatewayFactory
) -> None:
    other = gateway_factory()
    data = os.urandom(MiB * 5 + 3)
    assert call(gateway, "PUT", path_of(PUBLIC_POOL, "shared.bin"), data).status == 201
    assert call(other, "GET", path_of(PUBLIC_POOL, "shared.bin"), token=None).body == data
    etag = call(other, "HEAD", path_of(PUBLIC_POOL, "shared.bin")).headers["etag"]
    assert call(gateway, "HEAD", path_of(PUBLIC_POOL, "shared.bin")).headers["etag"] == etag
    assert call(other, "DELETE", path_of(PUBLIC_POOL, "shared.bin")).status == 204
    assert call(gateway, "GET", path_of(PUBLIC_POOL, "shared.bin")).status == 404


def test_https_with_curl(
    gateway_factory: GatewayFactory, cluster: Cluster, curl: str, tmp_path: Path
) -> None:
    cert, key = tls.issue(cluster.tls_dir, "localhost", ["127.0.0.1"], role="gateway")
    gateway = gateway_factory("--tls-cert", str(cert), "--tls-key", str(key))
    ca = str(cluster.tls_dir / "ca.crt")
    url = f"https://localhost:{gateway.port}/{PUBLIC_POOL}/tls.txt"
    put = run_curl(curl, "--fail", "--cacert", ca, "-T", "-", *auth(), url, input=b"secret")
    assert put.returncode == 0, put.stderr
    got = run_curl(curl, "--fail", "--cacert", ca, url)
    assert got.returncode == 0 and got.stdout == b"secret"
    health = run_curl(curl, "--fail", "--cacert", ca, f"https://localhost:{gateway.port}/healthz")
    assert health.stdout == b"ok\n"
    plain = run_curl(curl, f"http://localhost:{gateway.port}/healthz")
    assert plain.returncode != 0


def test_listing_with_curl(gateway: Gateway, curl: str) -> None:
    for name in ("curl-list/x/1", "curl-list/y"):
        call(gateway, "PUT", path_of(PUBLIC_POOL, name), b"1")
    html = run_curl(curl, "--fail", f"{gateway.url}/{PUBLIC_POOL}/curl-list/")
    assert b'href="/pub/curl-list/x/"' in html.stdout and b'href="/pub/curl-list/y"' in html.stdout
    as_json = run_curl(
        curl, "--fail", f"{gateway.url}/{PUBLIC_POOL}/?prefix=curl-list/&format=json"
    )
    listed = json.loads(as_json.stdout)
    assert listed["directories"] == ["curl-list/x/"]
    assert listed["objects"] == [{"name": "curl-list/y", "size": 1}]
