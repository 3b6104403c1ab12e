"""Records in the cluster round-trip; names parse back; range plans cover exactly."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.gateways.s3 import layout, objects
from store.gateways.s3.layout import (
    AccessKey,
    Bucket,
    CorruptRecord,
    Entry,
    Garbage,
    Part,
    PartEntry,
    Upload,
    UploadRef,
    User,
)
from store.gateways.s3.sweep import data_head_of


def test_records_round_trip() -> None:
    user = User("alice", "ab" * 32, 1.5)
    assert User.from_bytes(user.to_bytes()) == user
    key = AccessKey("SKEXAMPLE", "secret", "alice", 2.0)
    assert AccessKey.from_bytes(key.to_bytes()) == key
    bucket = Bucket("b", "0011", "alice", "ab" * 32, 3.0, "us-east-1", 8, "public-read")
    assert Bucket.from_bytes(bucket.to_bytes()) == bucket
    entry = Entry(
        size=10,
        etag="e" * 32,
        mtime=4.0,
        owner="alice",
        owner_id="ab" * 32,
        head="s3.data.0011.tok",
        parts=2,
        manifest_size=40,
        headers={"content-type": "text/plain"},
        meta={"color": "blue"},
        checksum=("crc32", "AAAAAA=="),
        acl="public-read",
        tags={"k": "v"},
    )
    assert Entry.from_bytes(entry.to_bytes()) == entry
    empty = Entry(0, "d41d8cd98f00b204e9800998ecf8427e", 5.0, "a", "i", None)
    assert Entry.from_bytes(empty.to_bytes()) == empty
    upload = Upload("u1", "b", "0011", "k", 6.0, "alice", "id", {"content-type": "x"}, {"m": "1"})
    assert Upload.from_bytes(upload.to_bytes()) == upload
    part = PartEntry(3, "s3.part.u1.t", 5, "f" * 32, 7.0, ("sha256", "x"))
    assert PartEntry.from_bytes(part.to_bytes()) == part
    garbage = Garbage("s3.data.0011.tok", 9, layout.STRIPE_SIZE, 2, 40)
    assert Garbage.from_bytes(garbage.to_bytes()) == garbage
    refs = [UploadRef("u2", 2.0, "a", "i"), UploadRef("u1", 1.0, "a", "i")]
    assert layout.unpack_upload_refs(layout.pack_upload_refs(refs)) == sorted(
        refs, key=lambda r: r.upload_id
    )
    parts = [Part(1, "h1", 5, "a" * 32), Part(2, "", 0, "b" * 32)]
    assert layout.unpack_manifest(layout.pack_manifest(parts)) == parts


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa1z\xa3bad"])
def test_corrupt_records_are_reported_not_crashing(raw: bytes) -> None:
    with pytest.raises(CorruptRecord):
        Entry.from_bytes(raw)


@pytest.mark.parametrize("raw", [b"\xc1", b"\x91\x93\x01\x02\x03", b"\x91\xa1x", b"\x01"])
def test_corrupt_lists_are_reported_not_crashing(raw: bytes) -> None:
    with pytest.raises(CorruptRecord, match="bad upload list"):
        layout.unpack_upload_refs(raw)
    with pytest.raises(CorruptRecord, match="bad multipart manifest"):
        layout.unpack_manifest(raw)


def test_names() -> None:
    head = layout.data_name("0011")
    assert head.startswith("s3.data.0011.")
    assert layout.stripe_name(head, 0) == head
    assert data_head_of(layout.stripe_name(head, 3)) == (head, head.split(".")[3])
    assert data_head_of(head) == (head, head.split(".")[3])
    assert data_head_of("s3.index.0011.3") is None
    assert data_head_of("s3.users") is None
    token = layout.new_token()
    assert abs(layout.token_time(token) - time.time()) < 5
    assert 0 <= layout.shard_of("any key", 8) < 8


@settings(max_examples=200, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=50),
    stripe=st.integers(min_value=1, max_value=9),
    start=st.integers(min_value=0, max_value=60),
    length=st.integers(min_value=0, max_value=60),
)
def test_striped_plan_covers_exactly(size: int, stripe: int, start: int, length: int) -> None:
    segments = objects.plan_striped("h", size, stripe, start, start + length)
    covered = []
    for segment in segments:
        index = 0 if segment.name == "h" else int(segment.name.rsplit(".", 1)[1])
        assert segment.length > 0 and segment.offset + segment.length <= stripe
        covered.extend(
            range(index * stripe + segment.offset, index * stripe + segment.offset + segment.length)
        )
    assert covered == list(range(start, min(start + length, size)))


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=5),
    start=st.integers(min_value=0, max_value=100),
    length=st.integers(min_value=0, max_value=100),
)
def test_parts_plan_covers_exactly(sizes: list[int], start: int, length: int) -> None:
    parts = [Part(i + 1, f"p{i}", size, "") for i, size in enumerate(sizes)]
    segments = objects.plan_parts(parts, start, start + length, stripe=7)
    bases = {f"p{i}": sum(sizes[:i]) for i in range(len(sizes))}
    covered = []
    for segment in segments:
        head, _, index = segment.name.partition(".")
        offset = bases[head] + (int(index) if index else 0) * 7 + segment.offset
        covered.extend(range(offset, offset + segment.length))
    assert covered == list(range(start, min(start + length, sum(sizes))))
