"""Where a request points: the health check, a pool's listing, or one object.

Paths are ``/<pool>/<object name>``, percent-encoded UTF-8. Object names may hold any
character but control characters, and ``/`` like any other; a path ending in ``/``
names a listing (a "directory") rather than an object. Names under ``.http/`` hold the
gateway's own data (see ``layout.py``) and are not reachable through it.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from dataclasses import dataclass
from typing import Literal

from store.osd.ops import MAX_NAME_BYTES

RESERVED_PREFIX = ".http/"
HEALTH_PATH = "/healthz"

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class BadTarget(ValueError):
    """A request path that names nothing this gateway serves; answered with 400."""


@dataclass(frozen=True)
class Target:
    kind: Literal["health", "root", "pool", "listing", "object"]
    pool: str = ""
    name: str = ""  # the object's name, or the listing's prefix ("" or ending in "/")


def decode_component(raw: str, what: str) -> str:
    """Percent-decode `raw` strictly: bad escapes, invalid UTF-8 and control characters
    are refused."""
    if _BAD_ESCAPE.search(raw):
        raise BadTarget(f"{what} has a '%' that is not followed by two hex digits")
    try:
        text = urllib.parse.unquote(raw, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadTarget(f"{what} is not valid percent-encoded UTF-8") from None
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise BadTarget(f"{what} contains control characters")
    return text


def parse_target(path: str) -> Target:
    """The Target of a request path (the part of the request-target before '?')."""
    if path == HEALTH_PATH:
        return Target("health")
    if not path.startswith("/"):
        raise BadTarget("the request target must be a path starting with '/'")
    pool_raw, slash, rest = path[1:].partition("/")
    if not pool_raw:
        if rest:
            raise BadTarget("the path starts with an empty pool name ('//')")
        return Target("root")
    pool = decode_component(pool_raw, "the pool name")
    if not slash:
        return Target("pool", pool)
    name = decode_component(rest, "the object name")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise BadTarget(f"object names are at most {MAX_NAME_BYTES} bytes of UTF-8")
    if name == "" or name.endswith("/"):
        return Target("listing", pool, name)
    return Target("object", pool, name)


def is_reserved(name: str) -> bool:
    return name.startswith(RESERVED_PREFIX)


def quote_name(name: str) -> str:
    """A name as it goes into a URL path (slashes kept)."""
    return urllib.parse.quote(name, safe="/")
