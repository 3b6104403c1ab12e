"""Listings through boto3: v1, v2 and versions, prefixes, delimiters, markers, paging,
URL encoding, and a bucket of 10,000 keys paged with a delimiter."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import trio
from botocore.exceptions import ClientError

from store.client.api import Client
from store.gateways.s3 import layout
from store.gateways.s3.backend import Backend
from store.gateways.s3.buckets import Buckets
from store.gateways.s3.layout import Entry
from tests.clients.s3.conftest import POOL, User, empty_and_delete, error_of
from tests.cluster.harness import Cluster

KEYS = [
    "a",
    "b/1",
    "b/2",
    "b/c/3",
    "c",
    "d/x y",
    "d/ü",
    "e+f",
]


@pytest.fixture(scope="module")
def listed(s3: Any) -> Iterator[str]:
    name = f"list-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    for key in KEYS:
        s3.put_object(Bucket=name, Key=key, Body=key.encode())
    yield name
    empty_and_delete(s3, name)


def test_v2_everything(s3: Any, listed: str, user: Any) -> None:
    page = s3.list_objects_v2(Bucket=listed)
    assert [o["Key"] for o in page["Contents"]] == KEYS
    assert page["KeyCount"] == len(KEYS) and not page["IsTruncated"]
    first = page["Contents"][0]
    assert first["Size"] == 1 and first["StorageClass"] == "STANDARD"
    assert first["ETag"].startswith('"') and "Owner" not in first
    owned = s3.list_objects_v2(Bucket=listed, FetchOwner=True)["Contents"][0]
    assert owned["Owner"]["ID"] == user.id


def test_v2_delimiter_and_prefix(s3: Any, listed: str) -> None:
    page = s3.list_objects_v2(Bucket=listed, Delimiter="/")
    assert [o["Key"] for o in page["Contents"]] == ["a", "c", "e+f"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["b/", "d/"]
    assert page["KeyCount"] == 5
    page = s3.list_objects_v2(Bucket=listed, Prefix="b/", Delimiter="/")
    assert [o["Key"] for o in page["Contents"]] == ["b/1", "b/2"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["b/c/"]


def test_v2_paging_with_continuation_tokens(s3: Any, listed: str) -> None:
    seen: list[str] = []
    kwargs: dict[str, Any] = {"Bucket": listed, "MaxKeys": 3, "Delimiter": "/"}
    while True:
        page = s3.list_objects_v2(**kwargs)
        seen += [o["Key"] for o in page.get("Contents", [])]
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        assert page["KeyCount"] <= 3
        if not page["IsTruncated"]:
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    assert sorted(seen) == ["a", "b/", "c", "d/", "e+f"]


def test_v2_start_after_and_max_keys(s3: Any, listed: str) -> None:
    page = s3.list_objects_v2(Bucket=listed, StartAfter="b/2", MaxKeys=2)
    assert [o["Key"] for o in page["Contents"]] == ["b/c/3", "c"]
    assert page["IsTruncated"] and page["StartAfter"] == "b/2"
    assert s3.list_objects_v2(Bucket=listed, MaxKeys=0)["KeyCount"] == 0


def test_v1_markers(s3: Any, listed: str) -> None:
    page = s3.list_objects(Bucket=listed, MaxKeys=2, Delimiter="/")
    assert [o["Key"] for o in page["Contents"]] == ["a"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["b/"]
    assert page["IsTruncated"] and page["NextMarker"] == "b/"
    page = s3.list_objects(Bucket=listed, Marker="b/", Delimiter="/")
    assert [o["Key"] for o in page["Contents"]] == ["c", "e+f"]
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["d/"]
    assert page["Contents"][0]["Owner"]["DisplayName"] == "alice"


def test_url_encoding(s3: Any, listed: str) -> None:
    # boto3 asks for encoding-type=url by itself and decodes the answer.
    page = s3.list_objects_v2(Bucket=listed, Prefix="d/")
    assert [o["Key"] for o in page["Contents"]] == ["d/x y", "d/ü"]
    # Asked for explicitly, the encoded form is handed over as it came.
    raw = s3.list_objects_v2(Bucket=listed, Prefix="d/", EncodingType="url")
    assert [o["Key"] for o in raw["Contents"]] == ["d/x%20y", "d/%C3%BC"]


def test_versions_of_an_unversioned_bucket(s3: Any, listed: str) -> None:
    page = s3.list_object_versions(Bucket=listed, Prefix="b/")
    versions = page["Versions"]
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in versions] == [
        ("b/1", "null", True),
        ("b/2", "null", True),
        ("b/c/3", "null", True),
    ]
    paged = s3.list_object_versions(Bucket=listed, MaxKeys=2)
    assert paged["IsTruncated"] and paged["NextKeyMarker"] == "b/1"
    rest = s3.list_object_versions(Bucket=listed, KeyMarker="b/1", VersionIdMarker="null")
    assert [v["Key"] for v in rest["Versions"]] == KEYS[2:]


def test_bad_listing_arguments(s3: Any, listed: str) -> None:
    with pytest.raises(ClientError) as caught:
        s3.list_objects_v2(Bucket=listed, ContinuationToken="@@not-a-token@@")
    assert error_of(caught.value) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as caught:
        s3.list_objects(Bucket=listed, EncodingType="base64")
    assert error_of(caught.value) == (400, "InvalidArgument")


def seed_index(cluster: Cluster, bucket: str, keys: list[str], owner: User) -> None:
    """Put index entries of empty objects for ``keys`` straight into the bucket's index.

    Listing is what is under test; 10,000 PUTs would only measure the cluster's small-write
    rate. The entries are the ones a PUT of an empty object publishes."""

    async def main() -> None:
        async with Client.connect(cluster.config()) as client:
            backend = Backend(client, POOL)
            record = await Buckets(backend).get(bucket, fresh=True)
            assert record is not None
            entry = Entry(0, hashlib.md5(b"").hexdigest(), time.time(), owner.name, owner.id, None)
            value = entry.to_bytes()
            shards: dict[int, list[str]] = {}
            for key in keys:
                shards.setdefault(layout.shard_of(key, record.shards), []).append(key)
            batches = [
                (shard, names[i : i + 200])
                for shard, names in shards.items()
                for i in range(0, len(names), 200)
            ]
            async with trio.open_nursery() as nursery:
                for shard, batch in batches:
                    name = layout.index_shard_name(record.id, shard)
                    ops = [["omap_set", {key: value for key in batch}]]
                    nursery.start_soon(backend.execute, name, ops)

    trio.run(main)


def test_ten_thousand_keys_page_in_order_with_a_delimiter(
    s3: Any, cluster: Cluster, user: User
) -> None:
    name = f"many-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    # 100 "directories" of 99 keys, and 100 keys at the top: 9,900 seeded, 100 PUT.
    directories = [f"dir{d:03d}/file{f:03d}" for d in range(100) for f in range(99)]
    top = [f"top{t:03d}" for t in range(100)]
    keys = directories + top
    try:
        seed_index(cluster, name, directories, user)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: s3.put_object(Bucket=name, Key=k, Body=b""), top))
        # All keys, 1000 a page, strictly increasing across pages.
        seen: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            seen += [o["Key"] for o in page.get("Contents", [])]
        assert seen == sorted(keys)
        # With a delimiter: 100 common prefixes then 100 keys, in pages of 33.
        entries: list[str] = []
        pages = 0
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=name, Delimiter="/", PaginationConfig={"PageSize": 33}
        ):
            pages += 1
            batch = [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            batch += [o["Key"] for o in page.get("Contents", [])]
            assert len(batch) <= 33
            entries += sorted(batch)
        assert entries == [f"dir{d:03d}/" for d in range(100)] + top
        assert pages == 7
        # Version listings and v1 markers page the same way.
        versions = []
        for page in s3.get_paginator("list_object_versions").paginate(
            Bucket=name, Delimiter="/", PaginationConfig={"PageSize": 50}
        ):
            versions += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            versions += [v["Key"] for v in page.get("Versions", [])]
        assert sorted(versions) == [f"dir{d:03d}/" for d in range(100)] + top
        inside: list[str] = []
        for page in s3.get_paginator("list_objects").paginate(
            Bucket=name, Prefix="dir042/", PaginationConfig={"PageSize": 10}
        ):
            inside += [o["Key"] for o in page.get("Contents", [])]
        assert inside == [f"dir042/file{f:03d}" for f in range(99)]
    finally:
        for i in range(0, len(keys), 1000):
            batch = keys[i : i + 1000]
            s3.delete_objects(
                Bucket=name, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
        s3.delete_bucket(Bucket=name)
