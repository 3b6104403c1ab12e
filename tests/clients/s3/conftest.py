"""One real cluster and real `store s3 serve` processes for every S3 client test.

The cluster (three daemons, pool ``s3`` of size 3) is shared by this package's tests and
stopped when they are done; each test module makes its own buckets. Gateways are
processes started through the CLI and killed (SIGKILL to their process group) at the
end, whatever happens. Client tools get their configuration in temporary directories,
never in the user's home, and an environment without the machine's ``AWS_*`` variables.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import ssl
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from store import tls
from tests.clients.gateway_process import GatewayProcess, started_gateways
from tests.cluster.harness import Cluster, running_cluster

POOL = "s3"
REGION = "us-east-1"


class Gateway(GatewayProcess):
    """One `store s3 serve` process, ready when it answers /healthz itself."""

    start_timeout = 60.0
    log_tail = 8000

    def __init__(self, cluster: Cluster, root: Path, name: str, *extra: str) -> None:
        super().__init__(cluster, root, name, extra)
        self.args = self.serve_args(
            "s3", cluster.conf, "--pool", POOL, "--region", REGION, "-v", *extra
        )

    def ready(self) -> bool:
        return self.healthy()

    def healthy(self) -> bool:
        context = None
        if self.scheme == "https":
            context = ssl.create_default_context(cafile=str(self.cluster.tls_dir / "ca.crt"))
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2, context=context) as r:
                return bool(r.status == 200)
        except OSError:
            return False


class User:
    def __init__(self, name: str, record: dict[str, str]) -> None:
        self.name = name
        self.id = record["id"]
        self.access_key = record["access_key"]
        self.secret_key = record["secret_key"]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for client tools: none of the machine's AWS_* settings, and no
    instance-metadata lookups (the AWS CLI would otherwise ask 169.254.169.254)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env.update(extra)
    return env


@pytest.fixture(scope="package")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("s3-cluster"), {POOL: (3, 32)}) as c:
        yield c


@pytest.fixture(scope="package")
def gateway_factory(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Gateway]]:
    root = tmp_path_factory.mktemp("s3-gateways")
    with started_gateways(functools.partial(Gateway, cluster, root)) as make:
        yield make


@pytest.fixture(scope="package")
def gateway(gateway_factory: Callable[..., Gateway]) -> Gateway:
    """The main gateway (plain HTTP, virtual hosts under s3.test, GC after 1 s)."""
    return gateway_factory("--domain", "s3.test", "--gc-delay", "1")


@pytest.fixture(scope="package")
def tls_files(cluster: Cluster) -> tuple[Path, Path, Path]:
    cert, key = tls.issue(cluster.tls_dir, "s3-gateway", ["localhost", "127.0.0.1"], role="gateway")
    return cert, key, cluster.tls_dir / "ca.crt"


@pytest.fixture(scope="package")
def https_gateway(
    gateway_factory: Callable[..., Gateway], tls_files: tuple[Path, Path, Path]
) -> Gateway:
    cert, key, _ = tls_files
    return gateway_factory("--tls-cert", str(cert), "--tls-key", str(key))


def make_user(cluster: Cluster, name: str) -> User:
    result = cluster.cli("s3", "user", "create", name, "--json", "--pool", POOL)
    return User(name, json.loads(result.stdout))


@pytest.fixture(scope="package")
def user(cluster: Cluster) -> User:
    return make_user(cluster, "alice")


@pytest.fixture(scope="package")
def other_user(cluster: Cluster) -> User:
    return make_user(cluster, "bob")


def s3_client(
    endpoint: str,
    user: User,
    *,
    verify: str | bool | None = None,
    region_name: str = REGION,
    **config: Any,
) -> Any:
    settings: dict[str, Any] = {
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    settings.update(config)
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=user.access_key,
        aws_secret_access_key=user.secret_key,
        region_name=region_name,
        verify=verify,
        config=Config(**settings),
    )


@pytest.fixture(scope="package")
def s3(gateway: Gateway, user: User) -> Any:
    return s3_client(gateway.url, user)


@pytest.fixture
def alice(gateway: Gateway, user: User) -> Any:
    """The main user's client (the owner of the buckets a test makes)."""
    return s3_client(gateway.url, user)


@pytest.fixture
def bob(gateway: Gateway, other_user: User) -> Any:
    """Another user's client."""
    return s3_client(gateway.url, other_user)


@pytest.fixture
def nobody(gateway: Gateway) -> Any:
    """A client that signs nothing."""
    return boto3.client(
        "s3",
        endpoint_url=gateway.url,
        region_name=REGION,
        config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}),
    )


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    """A fresh bucket, emptied and deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete(s3, name)


def empty_and_delete(s3: Any, name: str) -> None:
    """Delete every version of every key (delete markers too), every upload, the bucket."""
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=name):
        targets = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if targets:
            s3.delete_objects(Bucket=name, Delete={"Objects": targets, "Quiet": True})
    for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    s3.delete_bucket(Bucket=name)


def raw_request(
    gateway: Gateway,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request over a plain connection: (status, headers lower-cased, body)."""
    if gateway.scheme == "https":
        context = ssl.create_default_context(cafile=str(gateway.cluster.tls_dir / "ca.crt"))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", gateway.port, timeout=30, context=context
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    try:
        conn.request(method, target, body=body, headers=headers or {})
        response = conn.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def error_of(exc: Any) -> tuple[int, str]:
    """(HTTP status, S3 error code) of a botocore ClientError."""
    response = exc.response
    return response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Code"]


def failure(call: Any, **params: Any) -> tuple[int, str]:
    """(HTTP status, S3 error code) of a call that must fail."""
    with pytest.raises(ClientError) as caught:
        call(**params)
    return error_of(caught.value)
