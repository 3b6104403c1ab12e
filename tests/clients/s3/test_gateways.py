"""Gateways as stateless clients of the cluster: two at once, one killed mid-upload, data
freed after overwrites, memory bounded while streaming, users managed from the CLI."""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from tests.clients.s3.conftest import POOL, Gateway, User, error_of, make_user, s3_client
from tests.cluster.harness import Cluster, scheduling_policies, wait_until

MIB = 1024 * 1024


def pool_objects(cluster: Cluster) -> set[str]:
    out = cluster.cli("ls", "--pool", POOL).stdout.decode()
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def data_objects(cluster: Cluster) -> set[str]:
    return {name for name in pool_objects(cluster) if name.startswith(("s3.data.", "s3.part."))}


def test_two_gateways_serve_the_same_buckets(
    gateway: Gateway, gateway_factory: Callable[..., Gateway], user: User
) -> None:
    second = gateway_factory()
    for each in (gateway, second):  # store.threadsched
        assert each.proc is not None
        assert scheduling_policies(each.proc.pid) == {os.SCHED_BATCH}
    a, b = s3_client(gateway.url, user), s3_client(second.url, user)
    name = f"two-{uuid.uuid4().hex[:12]}"
    a.create_bucket(Bucket=name)
    assert name in [x["Name"] for x in b.list_buckets()["Buckets"]]
    data = os.urandom(6 * MIB)
    a.put_object(Bucket=name, Key="shared", Body=data)
    assert b.get_object(Bucket=name, Key="shared")["Body"].read() == data
    b.put_object(Bucket=name, Key="shared", Body=b"replaced through b")
    assert a.get_object(Bucket=name, Key="shared")["Body"].read() == b"replaced through b"
    upload = a.create_multipart_upload(Bucket=name, Key="mp")["UploadId"]
    etag = b.upload_part(Bucket=name, Key="mp", UploadId=upload, PartNumber=1, Body=b"x")["ETag"]
    a.complete_multipart_upload(
        Bucket=name,
        Key="mp",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    assert b.get_object(Bucket=name, Key="mp")["Body"].read() == b"x"
    b.delete_objects(Bucket=name, Delete={"Objects": [{"Key": "shared"}, {"Key": "mp"}]})
    with pytest.raises(ClientError) as caught:
        a.head_object(Bucket=name, Key="shared")
    assert error_of(caught.value)[0] == 404
    b.delete_bucket(Bucket=name)
    with pytest.raises(ClientError) as caught:
        a.put_object(Bucket=name, Key="late", Body=b"x")
    assert error_of(caught.value) == (404, "NoSuchBucket")


def start_upload(
    gateway: Gateway, user: User, bucket: str, key: str, total: int
) -> http.client.HTTPConnection:
    """A PUT (presigned, unsigned payload) whose body is sent by the caller."""
    url = urlsplit(
        s3_client(gateway.url, user).generate_presigned_url(
            "put_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=300
        )
    )
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60)
    conn.putrequest("PUT", f"{url.path}?{url.query}", skip_accept_encoding=True)
    conn.putheader("Content-Length", str(total))
    conn.endheaders()
    return conn


def test_kill_the_gateway_mid_upload(
    cluster: Cluster, gateway: Gateway, gateway_factory: Callable[..., Gateway], user: User, s3: Any
) -> None:
    name = f"kill-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="victim", Body=b"the old content")
    doomed = gateway_factory()
    before = data_objects(cluster)
    total = 40 * MIB
    conns = [start_upload(doomed, user, name, key, total) for key in ("victim", "fresh")]
    chunk = os.urandom(MIB)
    for _ in range(20):
        for conn in conns:
            conn.send(chunk)
    # Half sent: wait until stripes have reached the cluster, then kill -9.
    wait_until(
        lambda: len(data_objects(cluster) - before) >= 4,
        "stripes written to the cluster",
        timeout=60.0,
    )
    doomed.kill()
    for conn in conns:
        conn.close()
    time.sleep(2)  # let the daemons finish what was already sent to them
    leftovers = data_objects(cluster) - before
    # No partial object ever appears: the old one is whole, the new one does not exist.
    assert s3.get_object(Bucket=name, Key="victim")["Body"].read() == b"the old content"
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=name, Key="fresh")
    assert error_of(caught.value)[0] == 404
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]] == ["victim"]
    # The next request works, on a gateway started again.
    again = s3_client(gateway_factory().url, user)
    again.put_object(Bucket=name, Key="fresh", Body=b"after the crash")
    assert again.get_object(Bucket=name, Key="fresh")["Body"].read() == b"after the crash"
    # What the dead gateway wrote is an orphan: `store s3 gc --orphans` frees it.
    assert leftovers
    report = cluster.cli("s3", "gc", "--orphans", "--min-age", "0", "--pool", POOL).stdout.decode()
    assert "orphan data objects deleted" in report
    assert not (data_objects(cluster) & leftovers)
    assert s3.get_object(Bucket=name, Key="victim")["Body"].read() == b"the old content"
    assert s3.get_object(Bucket=name, Key="fresh")["Body"].read() == b"after the crash"
    s3.delete_objects(Bucket=name, Delete={"Objects": [{"Key": "victim"}, {"Key": "fresh"}]})
    s3.delete_bucket(Bucket=name)


def test_overwritten_and_deleted_data_is_freed(cluster: Cluster, s3: Any, bucket: str) -> None:
    before = data_objects(cluster)
    s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(9 * MIB))  # three stripes
    first = data_objects(cluster) - before
    assert len(first) == 3
    smaller = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="k", Body=smaller)
    second = data_objects(cluster) - before - first
    assert len(second) == 1
    # The main gateway frees replaced data after 1 s (--gc-delay 1), on its next pass.
    wait_until(
        lambda: not (data_objects(cluster) & first),
        "the replaced stripes to be freed",
        timeout=60.0,
    )
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == smaller
    # A small object lives in the index: no data object, and the last one is freed.
    s3.put_object(Bucket=bucket, Key="k", Body=b"small now")
    wait_until(
        lambda: not (data_objects(cluster) & second),
        "the data of the object a small one replaced to be freed",
        timeout=60.0,
    )
    assert data_objects(cluster) - before == set()
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"small now"
    s3.put_object(Bucket=bucket, Key="k", Body=smaller)
    third = data_objects(cluster) - before
    assert len(third) == 1
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == smaller
    s3.delete_object(Bucket=bucket, Key="k")
    wait_until(
        lambda: not (data_objects(cluster) & third),
        "the deleted object's data to be freed",
        timeout=60.0,
    )


def test_streaming_upload_memory_is_bounded(
    gateway_factory: Callable[..., Gateway], user: User, s3: Any, bucket: str
) -> None:
    gateway = gateway_factory()
    total = 256 * MIB
    conn = start_upload(gateway, user, bucket, "large", total)
    chunk = os.urandom(4 * MIB)
    for _ in range(total // len(chunk)):
        conn.send(chunk)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    conn.close()
    # The whole body never sat in memory: far less than 256 MiB on top of the process.
    assert gateway.peak_memory_kib() < 200 * 1024
    head = s3.head_object(Bucket=bucket, Key="large")
    assert head["ContentLength"] == total
    got = s3.get_object(Bucket=bucket, Key="large", Range=f"bytes={total - 4 * MIB}-")
    assert got["Body"].read() == chunk


def test_users_and_keys_from_the_cli(cluster: Cluster, gateway: Gateway) -> None:
    carol = make_user(cluster, "carol")
    listed = json.loads(cluster.cli("s3", "user", "ls", "--json", "--pool", POOL).stdout)
    assert {"user": "carol", "id": carol.id}.items() <= next(
        u for u in listed if u["user"] == "carol"
    ).items()
    assert "carol" in cluster.cli("s3", "user", "ls", "--pool", POOL).stdout.decode()
    again = cluster.cli("s3", "user", "create", "carol", "--pool", POOL, check=False)
    assert again.returncode != 0 and b"already exists" in again.stderr
    client = s3_client(gateway.url, carol)
    name = f"carol-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    extra = json.loads(cluster.cli("s3", "key", "add", "carol", "--json", "--pool", POOL).stdout)
    second = User("carol", {"id": carol.id, **extra})
    assert name in [b["Name"] for b in s3_client(gateway.url, second).list_buckets()["Buckets"]]
    refused = cluster.cli("s3", "user", "rm", "carol", "--pool", POOL, check=False)
    assert refused.returncode != 0 and name.encode() in refused.stderr
    cluster.cli("s3", "key", "rm", carol.access_key, "--pool", POOL)

    def first_key_refused() -> bool:
        try:
            client.list_buckets()
        except ClientError as exc:
            return error_of(exc) == (403, "InvalidAccessKeyId")
        return False

    wait_until(first_key_refused, "the removed key to be refused", timeout=20)
    s3_client(gateway.url, second).delete_bucket(Bucket=name)
    cluster.cli("s3", "user", "rm", "carol", "--pool", POOL)
    assert "carol" not in cluster.cli("s3", "user", "ls", "--pool", POOL).stdout.decode()
