"""Ranges and conditional requests, with S3's precedence rules."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from store.gateways.s3 import conditions
from store.gateways.s3.conditions import NotModified, http_date
from store.gateways.s3.errors import S3Error

ETAG = "0123456789abcdef0123456789abcdef"
MTIME = 1_700_000_000.7  # compared at the second, like Last-Modified
BEFORE = http_date(MTIME - 3600)
AFTER = http_date(MTIME + 3600)
AT = http_date(MTIME)


def headers(**values: str) -> Callable[[str], str | None]:
    lowered = {k.replace("_", "-").lower(): v for k, v in values.items()}
    return lambda name: lowered.get(name)


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 10)),
        ("bytes=90-200", 100, (90, 100)),
        ("bytes=50-", 100, (50, 100)),
        ("bytes=-10", 100, (90, 100)),
        ("bytes=-500", 100, (0, 100)),
        ("bytes=99-99", 100, (99, 100)),
        (None, 100, None),
        ("bytes=5-1", 100, None),  # not a valid range: the whole object
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole object
        ("items=0-1", 100, None),
        ("bytes=a-b", 100, None),
        ("bytes=-", 100, None),
    ],
)
def test_ranges(value: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert conditions.parse_range(value, size) == expected


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("bytes=100-", 100),
        ("bytes=200-300", 100),
        ("bytes=0-", 0),
        ("bytes=-0", 100),
        ("bytes=-5", 0),
    ],
)
def test_unsatisfiable_ranges(value: str, size: int) -> None:
    with pytest.raises(S3Error) as caught:
        conditions.parse_range(value, size)
    assert (caught.value.code, caught.value.status) == ("InvalidRange", 416)
    assert ("content-range", f"bytes */{size}") in caught.value.headers


def test_get_without_conditions_proceeds() -> None:
    conditions.check_get(headers(), ETAG, MTIME)


@pytest.mark.parametrize(
    "given",
    [
        {"if_match": f'"{ETAG}"'},
        {"if_match": "*"},
        {"if_match": f'"other", "{ETAG}"'},
        {"if_none_match": '"other"'},
        {"if_modified_since": BEFORE},
        {"if_unmodified_since": AFTER},
        {"if_unmodified_since": AT},
        # S3: If-Match true wins over If-Unmodified-Since false
        {"if_match": f'"{ETAG}"', "if_unmodified_since": BEFORE},
        {"if_modified_since": "not a date"},
    ],
)
def test_get_conditions_that_hold(given: dict[str, str]) -> None:
    conditions.check_get(headers(**given), ETAG, MTIME)


@pytest.mark.parametrize(
    "given",
    [
        {"if_match": '"other"'},
        {"if_unmodified_since": BEFORE},
        {"if_match": '"other"', "if_none_match": '"other"'},
    ],
)
def test_get_precondition_failed(given: dict[str, str]) -> None:
    with pytest.raises(S3Error) as caught:
        conditions.check_get(headers(**given), ETAG, MTIME)
    assert (caught.value.code, caught.value.status) == ("PreconditionFailed", 412)


@pytest.mark.parametrize(
    "given",
    [
        {"if_none_match": f'"{ETAG}"'},
        {"if_none_match": "*"},
        {"if_modified_since": AFTER},
        {"if_modified_since": AT},
        # S3: If-None-Match false wins over If-Modified-Since true
        {"if_none_match": f'"{ETAG}"', "if_modified_since": BEFORE},
    ],
)
def test_get_not_modified(given: dict[str, str]) -> None:
    with pytest.raises(NotModified):
        conditions.check_get(headers(**given), ETAG, MTIME)


def test_copy_source_conditions_fail_with_412() -> None:
    conditions.check_copy_source(headers(x_amz_copy_source_if_match=ETAG), ETAG, MTIME)
    for given in (
        {"x_amz_copy_source_if_match": "other"},
        {"x_amz_copy_source_if_none_match": ETAG},
        {"x_amz_copy_source_if_modified_since": AFTER},
        {"x_amz_copy_source_if_unmodified_since": BEFORE},
    ):
        with pytest.raises(S3Error) as caught:
            conditions.check_copy_source(headers(**given), ETAG, MTIME)
        assert caught.value.status == 412


def test_conditional_put() -> None:
    conditions.check_put(headers(if_none_match="*"), "k", None)
    with pytest.raises(S3Error, match="PreconditionFailed"):
        conditions.check_put(headers(if_none_match="*"), "k", ETAG)
    conditions.check_put(headers(if_match=f'"{ETAG}"'), "k", ETAG)
    with pytest.raises(S3Error, match="PreconditionFailed"):
        conditions.check_put(headers(if_match='"other"'), "k", ETAG)
    with pytest.raises(S3Error, match="NoSuchKey"):
        conditions.check_put(headers(if_match=f'"{ETAG}"'), "k", None)


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [("bytes=0-0", 10, (0, 1)), ("bytes=2-9", 10, (2, 10))],
)
def test_copy_ranges(value: str, size: int, expected: tuple[int, int]) -> None:
    assert conditions.parse_copy_range(value, size) == expected


@pytest.mark.parametrize("value", ["bytes=5-2", "bytes=-3", "0-3", "bytes=3-"])
def test_bad_copy_ranges(value: str) -> None:
    with pytest.raises(S3Error) as caught:
        conditions.parse_copy_range(value, 10)
    assert caught.value.code == "InvalidArgument"


def test_copy_range_past_the_source() -> None:
    with pytest.raises(S3Error) as caught:
        conditions.parse_copy_range("bytes=0-10", 10)
    assert (caught.value.code, caught.value.status) == ("InvalidRange", 416)
