"""The S3 gateway's metrics port, health endpoints and configuration, on a real cluster.

One gateway for the module, configured by a TOML file (`--config`) that sets its metrics
port, JSON logs and a GC delay, with flags on its command line that win over the file. A
known workload through boto3 must move the gateway's counters by exactly its requests and
bytes; refused signatures and anonymous requests are counted by reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import Gateway, User, raw_request, s3_client
from tests.cluster.harness import free_port
from tests.metric_samples import Samples, delta, parse_samples, value

SIZE = 300_000  # more than one chunk of a streamed answer


class Metered:
    def __init__(self, gateway: Gateway, address: str, config: Path) -> None:
        self.gateway = gateway
        self.address = address
        self.config = config

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.address}{path}", timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def scrape(self) -> Samples:
        """The samples of /metrics once no request is in flight (an answer's last bytes
        may still be on their way when the client has read them)."""
        deadline = time.monotonic() + 10
        while True:
            status, text = self.get("/metrics")
            assert status == 200
            samples = parse_samples(text)
            if value(samples, "store_s3_requests_in_flight") == 0:
                return samples
            assert time.monotonic() < deadline, "requests stay in flight"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def metered(
    gateway_factory: Callable[..., Gateway], tmp_path_factory: pytest.TempPathFactory
) -> Metered:
    address = f"127.0.0.1:{free_port()}"
    config = tmp_path_factory.mktemp("s3-config") / "s3.toml"
    config.write_text(
        f'metrics = "{address}"\n'
        'log-format = "json"\n'
        "gc-delay = 60\n"
        'region = "eu-west-1"  # the command line says otherwise, and wins\n'
    )
    gateway = gateway_factory("--config", str(config))
    metered = Metered(gateway, address, config)
    deadline = time.monotonic() + 30
    while metered.get("/readyz")[0] != 200:
        assert time.monotonic() < deadline, f"never ready: {metered.get('/readyz')}"
        time.sleep(0.1)
    return metered


def plain_client(metered: Metered, user: User) -> Any:
    # No aws-chunked framing or trailing checksums: the bytes on the wire are the object's.
    return s3_client(
        metered.gateway.url,
        user,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


def test_health_and_readiness(metered: Metered) -> None:
    assert metered.get("/healthz") == (200, "ok\n")
    assert metered.get("/readyz") == (200, "ready\n")
    samples = metered.scrape()
    assert value(samples, "store_build_info", version=_version(samples), role="s3") == 1
    assert value(samples, "store_client_map_epoch") > 0


def _version(samples: Samples) -> str:
    for name, labels in samples:
        if name == "store_build_info":
            return dict(labels)["version"]
    raise AssertionError("no store_build_info")


def test_counters_move_by_the_workload(metered: Metered, user: User) -> None:
    s3 = plain_client(metered, user)
    data = bytes(range(256)) * (SIZE // 256) + b"x" * (SIZE % 256)
    before = metered.scrape()
    s3.create_bucket(Bucket="metered")
    s3.put_object(Bucket="metered", Key="blob", Body=data)
    s3.head_object(Bucket="metered", Key="blob")
    listed = s3.list_objects_v2(Bucket="metered")
    assert [o["Key"] for o in listed["Contents"]] == ["blob"]
    middle = metered.scrape()
    assert s3.get_object(Bucket="metered", Key="blob")["Body"].read() == data
    after_get = metered.scrape()
    s3.delete_object(Bucket="metered", Key="blob")
    s3.delete_bucket(Bucket="metered")
    after = metered.scrape()

    requests = "store_s3_requests_total"
    for operation, status in [
        ("CreateBucket", "200"),
        ("PutObject", "200"),
        ("HeadObject", "200"),
        ("ListObjectsV2", "200"),
        ("GetObject", "200"),
        ("DeleteObject", "204"),
        ("DeleteBucket", "204"),
    ]:
        assert delta(before, after, requests, operation=operation, status=status) == 1, operation
        latency = "store_s3_request_latency_seconds_count"
        assert delta(before, after, latency, operation=operation) == 1, operation
    total = sum(v for (name, _), v in after.items() if name == requests) - sum(
        v for (name, _), v in before.items() if name == requests
    )
    assert total == 7

    # The only request body was the object's; the GET's answer was exactly the object.
    body = "store_s3_body_bytes_total"
    assert delta(before, middle, body, direction="received") == SIZE
    assert delta(middle, after_get, body, direction="received") == 0
    assert delta(middle, after_get, body, direction="sent") == SIZE
    assert delta(before, after, "store_s3_requests_cut_short_total", stage="response") == 0
    # The gateway used the cluster for all that.
    assert delta(before, after, "store_client_requests_total") > 0
    assert delta(before, after, "store_client_replies_total", result="ok") > 0


def test_refused_authentications_are_counted_by_reason(metered: Metered, user: User) -> None:
    before = metered.scrape()
    forged = User("mallory", {"id": user.id, "access_key": user.access_key, "secret_key": "x" * 40})
    unknown = User("nobody", {"id": "0", "access_key": "SKNOSUCHKEY0000000", "secret_key": "x"})
    for who, code in [(forged, "SignatureDoesNotMatch"), (unknown, "InvalidAccessKeyId")]:
        with pytest.raises(ClientError) as caught:
            plain_client(metered, who).list_buckets()
        assert caught.value.response["Error"]["Code"] == code
    status, _, _ = raw_request(metered.gateway, "GET", "/")
    assert status == 403
    after = metered.scrape()
    failures = "store_s3_auth_failures_total"
    assert delta(before, after, failures, reason="SignatureDoesNotMatch") == 1
    assert delta(before, after, failures, reason="InvalidAccessKeyId") == 1
    assert delta(before, after, failures, reason="Anonymous") == 1
    requests = "store_s3_requests_total"
    assert delta(before, after, requests, operation="ListBuckets", status="403") == 3


def store(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "store", *args], capture_output=True, text=True, timeout=60
    )


def test_config_show_and_logs(metered: Metered, user: User) -> None:
    shown = store("config", "show", "--metrics", metered.address, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["role"] == "s3" and doc["command"] == "store s3 serve"
    assert doc["config_file"] == str(metered.config.resolve())
    found = doc["settings"]
    assert found["metrics"] == {"value": metered.address, "source": "config file"}
    assert found["gc-delay"] == {"value": 60.0, "source": "config file"}
    assert found["log-format"] == {"value": "json", "source": "config file"}
    assert found["region"] == {"value": "us-east-1", "source": "command line"}
    assert found["listen"]["source"] == "command line"
    assert found["index-shards"]["source"] == "default"
    assert user.secret_key not in shown.stdout

    # The same file and flags, resolved without running them, give the same settings.
    resolved = store(
        "config", "show", "--json", "--", *metered.gateway.args[metered.gateway.args.index("s3") :]
    )
    assert resolved.returncode == 0, resolved.stderr
    again = json.loads(resolved.stdout)["settings"]
    assert {k: v["value"] for k, v in again.items()} == {k: v["value"] for k, v in found.items()}

    # JSON log lines, one event each, none with a secret.
    lines = [line for line in metered.gateway.log().splitlines() if line.startswith("{")]
    assert lines, metered.gateway.log()
    events = [json.loads(line) for line in lines]
    assert all(event["process"] == "s3" for event in events)
    assert any("S3 gateway on http://" in event["message"] for event in events)
    assert user.secret_key not in metered.gateway.log()
