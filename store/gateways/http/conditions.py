"""Entity tags, conditional requests and byte ranges (RFC 9110 sections 8.8, 13 and 14).

Pure functions over header values. The entity tag of an object is its cluster version
``(epoch, seq)``: the primary of the object's placement group assigns a new, larger one to
every change, replicas and recovery keep it, so it is strong (the same tag always means the
same bytes), free to compute (a stat returns it) and identical through every gateway.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

_TAG = re.compile(r'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(,|$)')
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


def etag_of(version: tuple[int, int]) -> str:
    return f'"{version[0]}.{version[1]}"'


def http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def parse_http_date(text: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def parse_tag_list(header: str) -> list[tuple[bool, str]] | None:
    """[(weak, opaque-tag)] of an If-Match / If-None-Match value; [] for "*"; None if bad."""
    if header.strip() == "*":
        return []
    tags: list[tuple[bool, str]] = []
    pos = 0
    while pos < len(header):
        if not header[pos:].strip():
            break
        match = _TAG.match(header, pos)
        if match is None:
            return None
        tags.append((match.group(1) is not None, match.group(2)))
        pos = match.end()
    return tags or None


def _matches(header: str, etag: str | None, *, weak: bool) -> bool:
    """Whether `etag` (None: no current representation) matches the header's list.
    A malformed list matches nothing."""
    tags = parse_tag_list(header)
    if tags is None or etag is None:
        return False
    if not tags:  # "*"
        return True
    return any(tag == etag and (weak or not is_weak) for is_weak, tag in tags)


def evaluate_preconditions(
    method: str,
    headers: dict[str, str],
    etag: str | None,
    mtime: float | None,
) -> int | None:
    """The status a conditional request gets instead of its normal answer (304 or 412),
    or None to proceed. `etag`/`mtime` are None when the object does not exist.

    `headers` maps lower-cased names to values. The order is RFC 9110 section 13.2.2."""
    read = method in ("GET", "HEAD")
    if_match = headers.get("if-match")
    if if_match is not None:
        if not _matches(if_match, etag, weak=False):
            return 412
    else:
        since = headers.get("if-unmodified-since")
        when = parse_http_date(since) if since is not None else None
        if when is not None and (mtime is None or int(mtime) > int(when)):
            return 412
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        if _matches(if_none_match, etag, weak=True):
            return 304 if read else 412
    elif read and mtime is not None:
        modified = headers.get("if-modified-since")
        when = parse_http_date(modified) if modified is not None else None
        if when is not None and int(mtime) <= int(when):
            return 304
    return None


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


class Unsatisfiable(Exception):
    """A well-formed range that selects nothing of the object: 416."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range a Range header asks of a `size`-byte object.

    None means "send the whole object": no header, a syntax we do not know (RFC 9110
    says to ignore it) or several ranges (not served as multipart; the whole object is a
    valid answer). Raises Unsatisfiable for a range past the end.
    """
    if header is None or "," in header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    if last and int(last) < start:
        return None  # invalid syntax: ignored
    if start >= size:
        raise Unsatisfiable()
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(start, end)


def range_applies(headers: dict[str, str], etag: str, mtime: float) -> bool:
    """If-Range: a Range is honoured only while the representation is unchanged."""
    condition = headers.get("if-range")
    if condition is None:
        return True
    condition = condition.strip()
    if condition.startswith(('"', "W/")):
        return condition == etag  # strong comparison; a weak tag never matches
    when = parse_http_date(condition)
    return when is not None and int(when) == int(mtime)
