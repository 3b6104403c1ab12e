"""Directory-like listings of a pool: names grouped at "/" after a prefix, in pages.

Pure: the gateway gives the names and sizes found under the prefix; this module groups,
pages and renders them as HTML (for browsers) or JSON (for programs).
"""

from __future__ import annotations

import html
import json
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from store.gateways.http.names import BadTarget, decode_component, quote_name

DELIMITER = "/"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class ListingQuery:
    prefix: str
    format: str  # "html" or "json"
    limit: int
    after: str | None


def parse_listing_query(query: str, path_prefix: str, accept: str | None) -> ListingQuery:
    """The listing a request asks for; raises BadTarget for bad parameters."""
    params: dict[str, str] = {}
    for part in query.split("&") if query else []:
        key_raw, _, value_raw = part.partition("=")
        key = decode_component(key_raw.replace("+", " "), "a query parameter")
        params[key] = decode_component(value_raw.replace("+", " "), f"query parameter {key!r}")
    wanted = params.get("format")
    if wanted is None:
        wanted = "json" if accept and "application/json" in accept.lower() else "html"
    if wanted not in ("html", "json"):
        raise BadTarget("format must be html or json")
    try:
        limit = int(params.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise BadTarget("limit must be a whole number") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise BadTarget(f"limit must be between 1 and {MAX_LIMIT}")
    return ListingQuery(path_prefix + params.get("prefix", ""), wanted, limit, params.get("after"))


@dataclass(frozen=True)
class Page:
    prefix: str
    directories: list[str]  # full names ending in "/"
    objects: list[tuple[str, int]]  # (full name, size)
    next_after: str | None  # pass as ?after= for the next page; None on the last


def group(entries: Iterable[tuple[str, int]], query: ListingQuery) -> Page:
    """One page of `entries` (name order, all starting with the prefix) grouped at "/"."""
    directories: list[str] = []
    objects: list[tuple[str, int]] = []
    count = 0
    last: str | None = None
    for name, size in entries:
        rest = name[len(query.prefix) :]
        cut = rest.find(DELIMITER)
        key = name if cut < 0 else query.prefix + rest[: cut + 1]
        if query.after is not None and key <= query.after:
            continue
        if key == last:
            continue  # another name inside the same directory
        if count == query.limit:
            return Page(query.prefix, directories, objects, last)
        count += 1
        last = key
        if cut < 0:
            objects.append((name, size))
        else:
            directories.append(key)
    return Page(query.prefix, directories, objects, None)


def render_json(pool: str, page: Page) -> bytes:
    body = {
        "pool": pool,
        "prefix": page.prefix,
        "delimiter": DELIMITER,
        "directories": page.directories,
        "objects": [{"name": name, "size": size} for name, size in page.objects],
        "truncated": page.next_after is not None,
        "next_after": page.next_after,
    }
    return json.dumps(body, ensure_ascii=False, indent=1).encode("utf-8")


def render_html(pool: str, page: Page) -> bytes:
    base = f"/{quote_name(pool)}/"
    title = html.escape(f"Index of /{pool}/{page.prefix}")
    rows = []
    if page.prefix:
        parent = page.prefix[:-1].rpartition(DELIMITER)[0]
        parent_href = base + quote_name(parent + DELIMITER if parent else "")
        rows.append(f'<tr><td><a href="{html.escape(parent_href)}">../</a></td><td></td></tr>')
    for directory in page.directories:
        label = html.escape(directory[len(page.prefix) :])
        href = html.escape(base + quote_name(directory))
        rows.append(f'<tr><td><a href="{href}">{label}</a></td><td>-</td></tr>')
    for name, size in page.objects:
        label = html.escape(name[len(page.prefix) :])
        href = html.escape(base + quote_name(name))
        rows.append(f'<tr><td><a href="{href}">{label}</a></td><td align="right">{size}</td></tr>')
    more = ""
    if page.next_after is not None:
        query = urllib.parse.urlencode({"after": page.next_after})
        href = html.escape(base + quote_name(page.prefix) + "?" + query)
        more = f'<p><a href="{href}">next page</a></p>'
    text = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{title}</title></head>\n<body><h1>{title}</h1>\n"
        "<table><tr><th>name</th><th>size</th></tr>\n"
        + "\n".join(rows)
        + f"\n</table>{more}</body></html>\n"
    )
    return text.encode("utf-8")
