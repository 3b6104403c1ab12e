"""Listing pages merged from sharded indexes agree with a plain model of S3 listing."""

from __future__ import annotations

import bisect

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from store.gateways.s3 import listing
from store.gateways.s3.layout import shard_of


def shards_of(keys: list[str], count: int) -> list[list[str]]:
    shards: list[list[str]] = [[] for _ in range(count)]
    for key in keys:
        shards[shard_of(key, count)].append(key)
    return [sorted(s) for s in shards]


def fetcher(shards: list[list[str]], prefix: str, calls: list[int]) -> listing.Fetch:
    async def fetch(
        shard: int, after: str | None, limit: int
    ) -> tuple[list[tuple[str, bytes]], bool]:
        calls.append(shard)
        await trio.lowlevel.checkpoint()
        keys = shards[shard]
        start = bisect.bisect_right(keys, after) if after is not None else 0
        found = [k for k in keys[start:] if k.startswith(prefix)]
        return [(k, k.encode()) for k in found[:limit]], len(found) > limit

    return fetch


def model(
    keys: list[str], prefix: str, delimiter: str, marker: str | None, max_keys: int
) -> tuple[list[str], list[str], bool]:
    """S3 listing as the documentation describes it, one key at a time."""
    if max_keys == 0:
        return [], [], False  # S3 answers max-keys=0 with an empty, untruncated page
    contents: list[str] = []
    prefixes: list[str] = []
    count = 0
    for key in sorted(keys):
        if not key.startswith(prefix) or (marker is not None and key <= marker):
            continue
        common = None
        if delimiter:
            rest = key[len(prefix) :]
            if delimiter in rest:
                common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
        if common is not None:
            if (prefixes and prefixes[-1] == common) or (marker is not None and common <= marker):
                continue
            if count == max_keys:
                return contents, prefixes, True
            prefixes.append(common)
        else:
            if count == max_keys:
                return contents, prefixes, True
            contents.append(key)
        count += 1
    return contents, prefixes, False


def run_page(
    keys: list[str],
    shard_count: int,
    prefix: str,
    delimiter: str,
    marker: str | None,
    max_keys: int,
) -> listing.Page:
    shards = shards_of(keys, shard_count)

    async def main() -> listing.Page:
        return await listing.list_page(
            fetcher(shards, prefix, []),
            shard_count,
            prefix=prefix,
            delimiter=delimiter,
            marker=marker,
            max_keys=max_keys,
        )

    return trio.run(main)


KEY = st.text(alphabet="ab/c-é😀", min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    keys=st.sets(KEY, max_size=40).map(sorted),
    shard_count=st.integers(min_value=1, max_value=5),
    prefix=st.sampled_from(["", "a", "a/", "b/c", "é"]),
    delimiter=st.sampled_from(["", "/", "c", "/c"]),
    marker=st.one_of(st.none(), KEY),
    max_keys=st.integers(min_value=0, max_value=12),
)
def test_one_page_matches_the_model(
    keys: list[str],
    shard_count: int,
    prefix: str,
    delimiter: str,
    marker: str | None,
    max_keys: int,
) -> None:
    page = run_page(keys, shard_count, prefix, delimiter, marker, max_keys)
    contents, prefixes, truncated = model(keys, prefix, delimiter, marker, max_keys)
    assert [k for k, _ in page.contents] == contents
    assert page.prefixes == prefixes
    assert page.truncated == truncated
    assert all(value == key.encode() for key, value in page.contents)


@settings(max_examples=100, deadline=None)
@given(
    keys=st.sets(KEY, max_size=60).map(sorted),
    shard_count=st.integers(min_value=1, max_value=4),
    delimiter=st.sampled_from(["", "/"]),
    max_keys=st.integers(min_value=1, max_value=7),
)
def test_paging_with_the_last_element_as_marker_visits_everything_once(
    keys: list[str], shard_count: int, delimiter: str, max_keys: int
) -> None:
    everything, every_prefix, _ = model(keys, "", delimiter, None, 10**6)
    seen: list[str] = []
    seen_prefixes: list[str] = []
    marker: str | None = None
    while True:
        page = run_page(keys, shard_count, "", delimiter, marker, max_keys)
        seen.extend(k for k, _ in page.contents)
        seen_prefixes.extend(page.prefixes)
        if not page.truncated:
            break
        assert page.last is not None
        marker = page.last
    assert seen == everything
    assert seen_prefixes == every_prefix


def test_a_large_common_prefix_costs_one_read_per_shard() -> None:
    keys = [f"dir/{i:05d}" for i in range(3000)] + ["zz"]
    shards = shards_of(keys, 4)
    calls: list[int] = []

    async def main() -> listing.Page:
        return await listing.list_page(fetcher(shards, "", calls), 4, delimiter="/", max_keys=1000)

    page = trio.run(main)
    assert page.prefixes == ["dir/"]
    assert [k for k, _ in page.contents] == ["zz"]
    assert len(calls) <= 3 * 4
