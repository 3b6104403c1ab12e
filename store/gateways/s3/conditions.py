"""Conditional requests and byte ranges, as S3 evaluates them (pure functions).

GET and HEAD follow RFC 7232 with S3's documented precedence: ``If-Match`` that holds
wins over an ``If-Unmodified-Since`` that does not, and ``If-None-Match`` that fails
(the ETag matches) wins over ``If-Modified-Since`` (304 Not Modified). CopyObject's
``x-amz-copy-source-if-*`` headers follow the same pairing but every failure is a 412.
A ``Range`` that does not parse is ignored, as HTTP says; one that parses but lies
wholly past the end is 416 InvalidRange.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate, parsedate_to_datetime

from store.gateways.s3 import errors


class NotModified(Exception):
    """Answer 304 Not Modified."""


def http_date(timestamp: float) -> str:
    return formatdate(int(timestamp), usegmt=True)


def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def etag_matches(header: str, etag: str) -> bool:
    """Whether an If-Match / If-None-Match list names ``etag`` (unquoted) or is ``*``."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate.startswith("W/"):
            candidate = candidate[2:]
        if candidate == "*" or candidate.strip('"') == etag:
            return True
    return False


def _evaluate(
    header: Callable[[str], str | None], names: tuple[str, str, str, str], etag: str, mtime: float
) -> str | None:
    """Which condition fails, as "match" (-> 412) or "none-match" (-> 304), or None."""
    if_match, if_none_match, if_modified, if_unmodified = (header(n) for n in names)
    modified = int(mtime)
    if if_match is not None:
        if not etag_matches(if_match, etag):
            return "match"
    else:
        since = parse_http_date(if_unmodified)
        if since is not None and modified > since:
            return "match"
    if if_none_match is not None:
        if etag_matches(if_none_match, etag):
            return "none-match"
    else:
        since = parse_http_date(if_modified)
        if since is not None and modified <= since:
            return "none-match"
    return None


def check_get(header: Callable[[str], str | None], etag: str, mtime: float) -> None:
    """Raise PreconditionFailed or NotModified for a GET/HEAD of an object."""
    failed = _evaluate(
        header,
        ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since"),
        etag,
        mtime,
    )
    if failed == "match":
        name = "If-Match" if header("if-match") is not None else "If-Unmodified-Since"
        raise errors.precondition_failed(name)
    if failed == "none-match":
        raise NotModified()


def check_copy_source(header: Callable[[str], str | None], etag: str, mtime: float) -> None:
    failed = _evaluate(
        header,
        (
            "x-amz-copy-source-if-match",
            "x-amz-copy-source-if-none-match",
            "x-amz-copy-source-if-modified-since",
            "x-amz-copy-source-if-unmodified-since",
        ),
        etag,
        mtime,
    )
    if failed == "match":
        name = (
            "x-amz-copy-source-If-Match"
            if header("x-amz-copy-source-if-match") is not None
            else "x-amz-copy-source-If-Unmodified-Since"
        )
        raise errors.precondition_failed(name)
    if failed == "none-match":
        name = (
            "x-amz-copy-source-If-None-Match"
            if header("x-amz-copy-source-if-none-match") is not None
            else "x-amz-copy-source-If-Modified-Since"
        )
        raise errors.precondition_failed(name)


def check_put(header: Callable[[str], str | None], key: str, current_etag: str | None) -> None:
    """Conditional writes: If-None-Match (``*``: only if absent; ETags: only if the current
    object is none of them) and If-Match (``*``: only if present; ETags: only if it is one)."""
    if_none_match = header("if-none-match")
    if (
        if_none_match is not None
        and current_etag is not None
        and etag_matches(if_none_match, current_etag)
    ):
        raise errors.precondition_failed("If-None-Match")
    if_match = header("if-match")
    if if_match is not None:
        if current_etag is None:
            raise errors.no_such_key(key)
        if not etag_matches(if_match, current_etag):
            raise errors.precondition_failed("If-Match")


@dataclass(frozen=True)
class DeleteCondition:
    """What a conditional delete requires of the object (each part only when given)."""

    etag: str | None = None  # If-Match: an ETag list or "*"
    mtime: float | None = None  # x-amz-if-match-last-modified-time
    size: int | None = None  # x-amz-if-match-size

    @property
    def empty(self) -> bool:
        return self.etag is None and self.mtime is None and self.size is None

    def check(self, etag: str | None, mtime: float, size: int) -> None:
        """Raise PreconditionFailed unless the object (``etag`` None: absent, which is
        never a failure: there is nothing to delete) is the one described."""
        if etag is None:
            return
        if self.etag is not None and not etag_matches(self.etag, etag):
            raise errors.precondition_failed("If-Match")
        if self.mtime is not None and int(mtime) != int(self.mtime):
            raise errors.precondition_failed("x-amz-if-match-last-modified-time")
        if self.size is not None and size != self.size:
            raise errors.precondition_failed("x-amz-if-match-size")


def parse_iso_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return parse_http_date(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def delete_condition(etag: str | None, mtime: str | None, size: str | None) -> DeleteCondition:
    parsed_size = None
    if size is not None:
        if not size.strip().isdigit():
            raise errors.invalid_argument("Invalid size", "x-amz-if-match-size", size)
        parsed_size = int(size.strip())
    parsed_mtime = None
    if mtime is not None:
        parsed_mtime = parse_iso_time(mtime)
        if parsed_mtime is None:
            raise errors.invalid_argument(
                "Invalid time", "x-amz-if-match-last-modified-time", mtime
            )
    return DeleteCondition(etag, parsed_mtime, parsed_size)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The [start, end) a Range header selects, None for "the whole object"; raises
    InvalidRange when it is unsatisfiable."""
    if value is None:
        return None
    unit, sep, spec = value.strip().partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    first, last = first.strip(), last.strip()
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise errors.invalid_range(size)
        return max(0, size - suffix), size
    start = int(first)
    end = int(last) + 1 if last else size
    if last and end <= start:
        return None
    if start >= size:
        raise errors.invalid_range(size)
    return start, min(end, size)


def parse_copy_range(value: str, size: int) -> tuple[int, int]:
    """x-amz-copy-source-range: bytes=first-last, both required and inside the source."""
    unit, sep, spec = value.strip().partition("=")
    first, dash, last = spec.partition("-")
    if (
        not sep
        or unit != "bytes"
        or not dash
        or not first.isdigit()
        or not last.isdigit()
        or int(last) < int(first)
    ):
        raise errors.invalid_argument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy",
            "x-amz-copy-source-range",
            value,
        )
    start, end = int(first), int(last) + 1
    if end > size:
        raise errors.invalid_range(size)
    return start, end


def now_utc() -> datetime:
    return datetime.now(UTC)
