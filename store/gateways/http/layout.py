"""How the gateway lays an HTTP object out in cluster objects. Pure: names and codecs.

An object ``NAME`` of a pool is the cluster object ``NAME`` (its *head*) with two
attributes: ``content-type`` and ``http.manifest`` (msgpack). Small objects are stored
whole in the head: data, type and manifest are replaced by one atomic compound write.
Larger ones are written first to *stripes* — cluster objects ``.http/d/<upload>/<i>``
of ``stripe`` bytes each, ``<upload>`` a fresh random id — and then published by
pointing the head's manifest at them, again one atomic write. Stripes are never
modified once published, so a reader holding a manifest reads one consistent version.

Stripes no head points at any more — replaced or deleted objects, uploads that failed or
whose gateway died — are found through *collection entries*: omap entries of the objects
``.http/gc/<h>`` (``h`` the first hex digit of the upload id), keyed by upload id, naming
the head that may reference it and a time before which nothing is removed. See
``storage.py`` for when they are written and ``collector.py`` for how they are used.

A head without ``http.manifest`` is a plain cluster object (written by ``store write``,
for example) and is served as it is.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

from store.gateways.http.names import RESERVED_PREFIX

XATTR_CONTENT_TYPE = "content-type"
XATTR_MANIFEST = "http.manifest"
STRIPE_SIZE = 4 * 1024 * 1024
GC_SHARDS = "0123456789abcdef"
MAX_STRIPE_SIZE = 64 * 1024 * 1024


class CorruptLayout(ValueError):
    """An attribute or entry that does not decode: stored by something else or damaged."""


def stripe_name(upload: str, index: int) -> str:
    return f"{RESERVED_PREFIX}d/{upload}/{index}"


def gc_object(upload: str) -> str:
    return f"{RESERVED_PREFIX}gc/{upload[0]}"


def gc_objects() -> list[str]:
    return [f"{RESERVED_PREFIX}gc/{h}" for h in GC_SHARDS]


def is_upload_id(text: str) -> bool:
    return len(text) == 32 and all(c in GC_SHARDS for c in text)


def _decode_map(raw: bytes, what: str) -> dict[Any, Any]:
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise CorruptLayout(f"{what} is not msgpack") from None
    if not isinstance(value, dict):
        raise CorruptLayout(f"{what} is not a map")
    return value


def _int(value: object, what: str, *, minimum: int = 0) -> int:
    if type(value) is not int or value < minimum:
        raise CorruptLayout(f"{what} must be an integer >= {minimum}")
    return value


@dataclass(frozen=True)
class Manifest:
    size: int
    upload: str | None = None  # None: the data is in the head itself
    stripe: int = STRIPE_SIZE

    @property
    def stripes(self) -> int:
        return math.ceil(self.size / self.stripe) if self.upload else 0

    def encode(self) -> bytes:
        body: dict[str, object] = {"size": self.size}
        if self.upload is not None:
            body["upload"] = self.upload
            body["stripe"] = self.stripe
        return bytes(msgpack.packb(body))

    @classmethod
    def decode_untrusted(cls, raw: bytes) -> Manifest:
        body = _decode_map(raw, "the manifest")
        size = _int(body.get("size"), "manifest size")
        upload = body.get("upload")
        if upload is None:
            return cls(size)
        if not isinstance(upload, str) or not is_upload_id(upload):
            raise CorruptLayout("manifest upload id is not 32 hex digits")
        stripe = _int(body.get("stripe"), "manifest stripe size", minimum=1)
        if stripe > MAX_STRIPE_SIZE:
            raise CorruptLayout("manifest stripe size is too large")
        return cls(size, upload, stripe)

    def pieces(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(stripe index, offset in stripe, length) covering bytes start..end inclusive."""
        position = start
        while position <= end:
            index, offset = divmod(position, self.stripe)
            length = min(self.stripe - offset, end - position + 1)
            yield index, offset, length
            position += length


@dataclass(frozen=True)
class CollectEntry:
    """Stripes of one upload that may be removed after `not_before` unless the head
    `name` points at them. `stripes` is None when unknown (an upload cut short)."""

    name: str
    not_before: float
    stripes: int | None = None

    def encode(self) -> bytes:
        return bytes(msgpack.packb({"name": self.name, "t": self.not_before, "n": self.stripes}))

    @classmethod
    def decode_untrusted(cls, raw: bytes) -> CollectEntry:
        body = _decode_map(raw, "a collection entry")
        name, when, stripes = body.get("name"), body.get("t"), body.get("n")
        if not isinstance(name, str) or not name:
            raise CorruptLayout("collection entry names no object")
        if not isinstance(when, int | float) or isinstance(when, bool):
            raise CorruptLayout("collection entry has no time")
        if stripes is not None:
            stripes = _int(stripes, "collection entry stripe count")
        return cls(name, float(when), stripes)
