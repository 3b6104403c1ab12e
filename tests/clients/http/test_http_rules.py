"""The HTTP gateway's pure rules: paths, access, preconditions, ranges, listings, layout.

No cluster and no sockets: these are functions of header values and names.
"""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from store.errors import ConfigError
from store.gateways.http.access import AccessPolicy, load_tokens
from store.gateways.http.conditions import (
    ByteRange,
    Unsatisfiable,
    etag_of,
    evaluate_preconditions,
    http_date,
    parse_range,
    parse_tag_list,
    range_applies,
)
from store.gateways.http.layout import CollectEntry, CorruptLayout, Manifest, gc_object, stripe_name
from store.gateways.http.listing import ListingQuery, group, parse_listing_query, render_html
from store.gateways.http.names import BadTarget, Target, parse_target

TOKEN = b"a-token-of-enough-length"

# --- paths --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "target"),
    [
        ("/healthz", Target("health")),
        ("/", Target("root")),
        ("/pool", Target("pool", "pool")),
        ("/pool/", Target("listing", "pool", "")),
        ("/pool/a/b/", Target("listing", "pool", "a/b/")),
        ("/pool/a/b", Target("object", "pool", "a/b")),
        ("/my%20pool/%C3%BC%2Fx", Target("object", "my pool", "ü/x")),
        ("/pool/a+b", Target("object", "pool", "a+b")),
        ("/pool//double", Target("object", "pool", "/double")),
    ],
)
def test_paths(path: str, target: Target) -> None:
    assert parse_target(path) == target


@pytest.mark.parametrize(
    "path",
    ["pool/x", "//x", "/pool/%zz", "/pool/%C3", "/pool/a%00b", "/p%0A/x", "/pool/" + "x" * 1025],
)
def test_bad_paths(path: str) -> None:
    with pytest.raises(BadTarget):
        parse_target(path)


# --- access -------------------------------------------------------------------------------


def test_access_policy() -> None:
    policy = AccessPolicy((TOKEN,), frozenset({"pub"}))
    bearer = f"Bearer {TOKEN.decode()}"
    assert policy.check("pub", False, None) is None
    assert policy.check("pub", True, bearer) is None
    assert policy.check("priv", False, f"bearer   {TOKEN.decode()} ") is None
    missing = policy.check("priv", False, None)
    assert missing is not None and missing.status == 401
    assert dict(missing.headers)["WWW-Authenticate"].startswith("Bearer")
    write = policy.check("pub", True, None)
    assert write is not None and write.status == 401
    wrong = policy.check("pub", False, "Bearer nope")  # a wrong token is refused even here
    assert wrong is not None and wrong.status == 403
    basic = policy.check("priv", True, "Basic abc")
    assert basic is not None and basic.status == 401 and "invalid_request" in str(basic.headers)
    closed = AccessPolicy((), frozenset({"pub"}))
    assert closed.check("pub", False, None) is None
    refused = closed.check("pub", True, None)
    assert refused is not None and refused.status == 403 and "--token-file" in refused.message


def test_token_files(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("# comment\n\n  first-token-0123456789  \nsecond-token-0123456789\n")
    assert load_tokens(good) == (b"first-token-0123456789", b"second-token-0123456789")
    for text in ("", "# only a comment\n", "short\n", "has space in it 0123456789\n"):
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(ConfigError):
            load_tokens(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokens(tmp_path / "missing")


# --- preconditions ------------------------------------------------------------------------

ETAG = etag_of((3, 14))
MTIME = 1_700_000_000.0


def test_etags_and_tag_lists() -> None:
    assert ETAG == '"3.14"'
    assert parse_tag_list("*") == []
    assert parse_tag_list('"a", W/"b" ,"c"') == [(False, '"a"'), (True, '"b"'), (False, '"c"')]
    assert parse_tag_list("unquoted") is None
    assert parse_tag_list('"a" "b"') is None


@pytest.mark.parametrize(
    ("method", "headers", "exists", "expected"),
    [
        ("GET", {}, True, None),
        ("GET", {"if-none-match": ETAG}, True, 304),
        ("HEAD", {"if-none-match": f'"x", W/{ETAG}'}, True, 304),
        ("GET", {"if-none-match": '"x"'}, True, None),
        ("GET", {"if-none-match": "*"}, False, None),
        ("PUT", {"if-none-match": "*"}, True, 412),
        ("PUT", {"if-none-match": "*"}, False, None),
        ("GET", {"if-match": ETAG}, True, None),
        ("GET", {"if-match": f"W/{ETAG}"}, True, 412),
        ("GET", {"if-match": "*"}, False, 412),
        ("DELETE", {"if-match": '"1.1"'}, True, 412),
        ("GET", {"if-match": "garbage"}, True, 412),
        ("GET", {"if-modified-since": http_date(MTIME)}, True, 304),
        ("GET", {"if-modified-since": http_date(MTIME - 1)}, True, None),
        ("GET", {"if-modified-since": "not a date"}, True, None),
        ("PUT", {"if-modified-since": http_date(MTIME)}, True, None),
        ("GET", {"if-unmodified-since": http_date(MTIME - 10)}, True, 412),
        ("GET", {"if-unmodified-since": http_date(MTIME)}, True, None),
        # If-Match wins over If-Unmodified-Since; If-None-Match over If-Modified-Since
        ("GET", {"if-match": ETAG, "if-unmodified-since": http_date(0)}, True, None),
        ("GET", {"if-none-match": '"x"', "if-modified-since": http_date(MTIME)}, True, None),
    ],
)
def test_preconditions(
    method: str, headers: dict[str, str], exists: bool, expected: int | None
) -> None:
    etag, mtime = (ETAG, MTIME) if exists else (None, None)
    assert evaluate_preconditions(method, headers, etag, mtime) == expected


# --- ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 10, None),
        ("bytes=0-0", 10, ByteRange(0, 0)),
        ("bytes=2-", 10, ByteRange(2, 9)),
        ("bytes=-3", 10, ByteRange(7, 9)),
        ("bytes=-30", 10, ByteRange(0, 9)),
        ("bytes=5-100", 10, ByteRange(5, 9)),
        (" Bytes = 1 - 2 ", 10, ByteRange(1, 2)),
        ("bytes=5-4", 10, None),
        ("bytes=0-1,3-4", 10, None),
        ("bytes=-", 10, None),
        ("lines=1-2", 10, None),
    ],
)
def test_ranges(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=10-", 10), ("bytes=-0", 10), ("bytes=0-", 0), ("bytes=-5", 0)]
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)


@given(st.text(max_size=30), st.integers(0, 10**12))
def test_any_range_header_selects_bytes_inside_the_object(header: str, size: int) -> None:
    try:
        chosen = parse_range(header, size)
    except Unsatisfiable:
        return
    if chosen is not None:
        assert 0 <= chosen.start <= chosen.end < size
        assert chosen.content_range(size) == f"bytes {chosen.start}-{chosen.end}/{size}"


def test_if_range() -> None:
    assert range_applies({}, ETAG, MTIME)
    assert range_applies({"if-range": ETAG}, ETAG, MTIME)
    assert not range_applies({"if-range": '"0.1"'}, ETAG, MTIME)
    assert not range_applies({"if-range": f"W/{ETAG}"}, ETAG, MTIME)
    assert range_applies({"if-range": http_date(MTIME)}, ETAG, MTIME)
    assert not range_applies({"if-range": http_date(MTIME - 5)}, ETAG, MTIME)


# --- listings -----------------------------------------------------------------------------


def query(prefix: str = "", limit: int = 1000, after: str | None = None) -> ListingQuery:
    return ListingQuery(prefix, "json", limit, after)


def test_grouping_at_slashes() -> None:
    names = ["a/b/c", "a/d", "a0", "e", "f/"]
    entries = sorted((n, len(n)) for n in names)
    page = group(entries, query())
    assert page.directories == ["a/", "f/"]
    assert page.objects == [("a0", 2), ("e", 1)]
    inner = group([(n, s) for n, s in entries if n.startswith("a/")], query("a/"))
    assert inner.directories == ["a/b/"] and inner.objects == [("a/d", 3)]


@given(st.lists(st.text(alphabet="ab/", min_size=1, max_size=6), unique=True), st.integers(1, 5))
def test_pages_cover_every_entry_once(names: list[str], limit: int) -> None:
    entries = sorted((n, 0) for n in names)
    whole = group(entries, query(limit=10_000))
    expected = sorted(whole.directories + [n for n, _ in whole.objects])
    seen: list[str] = []
    after = None
    for _ in range(len(names) + 2):
        page = group(entries, query(limit=limit, after=after))
        keys = sorted(page.directories + [n for n, _ in page.objects])
        assert len(keys) <= limit
        seen += keys
        after = page.next_after
        if after is None:
            break
    assert seen == expected


def test_listing_query_parameters() -> None:
    parsed = parse_listing_query("prefix=x%2Fy&format=json&limit=5&after=x%2Fy%2Fa", "p/", None)
    assert parsed == ListingQuery("p/x/y", "json", 5, "x/y/a")
    assert parse_listing_query("", "", "application/json").format == "json"
    assert parse_listing_query("", "", "text/html").format == "html"
    for bad in ("format=xml", "limit=0", "limit=x", "limit=10001", "prefix=%zz"):
        with pytest.raises(BadTarget):
            parse_listing_query(bad, "", None)


def test_html_listing_escapes_names() -> None:
    page = group([("<img src=x onerror=alert(1)>", 1), ('q"uote/x', 1)], query())
    text = render_html("pool", page).decode()
    assert "<img" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert 'href="/pool/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in text
    assert 'href="/pool/q%22uote/"' in text


# --- layout -------------------------------------------------------------------------------


def test_manifests() -> None:
    upload = "0123456789abcdef0123456789abcdef"
    striped = Manifest(10 * 1024 * 1024 + 1, upload)
    assert Manifest.decode_untrusted(striped.encode()) == striped
    assert striped.stripes == 3
    assert Manifest.decode_untrusted(Manifest(5).encode()) == Manifest(5)
    assert Manifest(5).stripes == 0
    assert stripe_name(upload, 2) == f".http/d/{upload}/2"
    assert gc_object(upload) == ".http/gc/0"
    small = Manifest(100, upload, stripe=40)
    assert list(small.pieces(30, 85)) == [(0, 30, 10), (1, 0, 40), (2, 0, 6)]
    assert list(small.pieces(0, 99)) == [(0, 0, 40), (1, 0, 40), (2, 0, 20)]


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"size": -1}),
        msgpack.packb({"size": 1, "upload": "not-hex"}),
        msgpack.packb({"size": 1, "upload": "0" * 32, "stripe": 0}),
        msgpack.packb({"size": True}),
    ],
)
def test_corrupt_manifests_are_refused(raw: bytes) -> None:
    with pytest.raises(CorruptLayout):
        Manifest.decode_untrusted(raw)


def test_collection_entries() -> None:
    entry = CollectEntry("a/b", 12.5, 3)
    assert CollectEntry.decode_untrusted(entry.encode()) == entry
    assert CollectEntry.decode_untrusted(CollectEntry("x", 1.0).encode()).stripes is None
    for raw in (b"", msgpack.packb({"name": "", "t": 1}), msgpack.packb({"name": "x", "t": "no"})):
        with pytest.raises(CorruptLayout):
            CollectEntry.decode_untrusted(raw)
