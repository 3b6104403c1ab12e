"""How S3 state is laid out in the cluster pool: object names and record encodings.

Theory of operation
-------------------
Everything lives in one pool (``--pool``, default ``s3``):

``s3.users``                  omap ``u.<name>`` -> user, ``k.<access key>`` -> key
``s3.buckets``                omap ``b.<bucket>`` -> bucket record (owner, id, shards ...),
                              ``p.<bucket>`` -> its bucket policy (bucket id, JSON text)
``s3.index.<id>.<n>``         the bucket index, shard n: omap ``<key>`` -> object entry,
                              ``\\0d<key>`` -> its bytes when it is small (``INLINE_MAX``),
                              and the version records of :mod:`versions`
``s3.uploads.<id>``           omap ``<key>`` -> the multipart uploads in progress for it
``s3.upload.<upload id>``     omap ``meta`` -> upload record, ``p.<nnnnn>`` -> part entry
``s3.data.<id>.<token>``      an object's first stripe (or a multipart manifest) ...
``s3.data.<id>.<token>.<i>``  ... and its further stripes
``s3.part.<upload>.<token>``  one uploaded part, striped the same way
``s3.gc.<n>``                 omap ``<due time>.<token>`` -> data to delete after a delay

A key's index shard is ``xxh3(key) mod shards``. An object entry holds everything but
the data: size, ETag, time, owner, HTTP metadata, and where the data is. Data is written
under a fresh token first and published by one atomic omap operation on the index shard
that also returns the entry it replaced, whose data then goes to the GC queue. So a
reader sees the old object or the new one, and of two concurrent PUTs one wins whole.

Records are msgpack maps with short keys; unknown keys are ignored when decoding, so
newer gateways can add fields.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import xxhash

from store.gateways.s3.access import Grant, PublicAccessBlock, grants_of
from store.gateways.s3.cors import CorsRule
from store.gateways.s3.object_lock import Rule

T = TypeVar("T")

USERS = "s3.users"
BUCKETS = "s3.buckets"
STRIPE_SIZE = 4 * 1024 * 1024
INLINE_MAX = 16 * 1024  # objects up to this size (unversioned buckets) live in the index
GC_SHARDS = 8
DEFAULT_INDEX_SHARDS = 8


class CorruptRecord(Exception):
    """A record in the cluster that does not decode: a bug or damage, never user input."""


def new_token() -> str:
    """Unique, and ordered by creation time (seconds) so that age is visible in names."""
    return f"{int(time.time()):08x}{secrets.token_hex(8)}"


def token_time(token: str) -> int:
    try:
        return int(token[:8], 16)
    except ValueError:
        return 0


def index_shard_name(bucket_id: str, shard: int) -> str:
    return f"s3.index.{bucket_id}.{shard}"


def shard_of(key: str, shards: int) -> int:
    return xxhash.xxh3_64_intdigest(key.encode("utf-8")) % shards


def uploads_name(bucket_id: str) -> str:
    return f"s3.uploads.{bucket_id}"


def upload_name(upload_id: str) -> str:
    return f"s3.upload.{upload_id}"


def part_key(number: int) -> str:
    return f"p.{number:05d}"


def data_name(bucket_id: str) -> str:
    return f"s3.data.{bucket_id}.{new_token()}"


def part_data_name(upload_id: str) -> str:
    return f"s3.part.{upload_id}.{new_token()}"


def stripe_name(head: str, index: int) -> str:
    return head if index == 0 else f"{head}.{index}"


def gc_shard_name(shard: int) -> str:
    return f"s3.gc.{shard}"


def pack(record: dict[str, Any]) -> bytes:
    return msgpack.packb(record, use_bin_type=True)


def unpack(raw: bytes) -> dict[str, Any]:
    try:
        record = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise CorruptRecord(f"undecodable record: {exc}") from None
    if not isinstance(record, dict):
        raise CorruptRecord("a record must be a map")
    return record


# --- users and keys ------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    name: str
    id: str  # canonical user id, 64 hex digits as in S3
    created: float

    def to_bytes(self) -> bytes:
        return pack({"n": self.name, "i": self.id, "c": self.created})

    @classmethod
    def from_bytes(cls, raw: bytes) -> User:
        r = unpack(raw)
        return cls(str(r["n"]), str(r["i"]), float(r["c"]))


@dataclass(frozen=True)
class AccessKey:
    access_key: str
    secret: str
    user: str
    created: float

    def to_bytes(self) -> bytes:
        return pack({"a": self.access_key, "s": self.secret, "u": self.user, "c": self.created})

    @classmethod
    def from_bytes(cls, raw: bytes) -> AccessKey:
        r = unpack(raw)
        return cls(str(r["a"]), str(r["s"]), str(r["u"]), float(r["c"]))


# --- buckets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    name: str
    id: str
    owner: str  # user name
    owner_id: str  # canonical id
    created: float
    region: str
    shards: int
    acl: str = "private"
    tags: dict[str, str] = field(default_factory=dict)
    cors: tuple[CorsRule, ...] = ()
    versioning: str = ""  # "" (never enabled), "Enabled" or "Suspended"
    object_lock: bool = False
    lock_rule: Rule | None = None  # the default retention of new versions
    public_block: PublicAccessBlock | None = None
    grants: tuple[Grant, ...] = ()  # when ``acl`` is "custom"
    # The bucket policy's JSON text: a record of its own (see ``buckets``), not this one's.
    policy: str | None = None

    def to_bytes(self) -> bytes:
        record: dict[str, Any] = {
            "tg": self.tags,
            "n": self.name,
            "i": self.id,
            "o": self.owner,
            "oi": self.owner_id,
            "c": self.created,
            "r": self.region,
            "s": self.shards,
            "a": self.acl,
        }
        if self.cors:
            record["co"] = [rule.to_wire() for rule in self.cors]
        if self.versioning:
            record["vs"] = self.versioning
        if self.object_lock:
            record["ol"] = True
        if self.lock_rule is not None:
            record["lr"] = self.lock_rule.to_wire()
        if self.public_block is not None:
            record["pb"] = self.public_block.to_wire()
        if self.grants:
            record["gr"] = [g.to_wire() for g in self.grants]
        return pack(record)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Bucket:
        r = unpack(raw)
        return cls(
            str(r["n"]),
            str(r["i"]),
            str(r["o"]),
            str(r["oi"]),
            float(r["c"]),
            str(r["r"]),
            int(r["s"]),
            str(r.get("a", "private")),
            {str(k): str(v) for k, v in r.get("tg", {}).items()},
            tuple(CorsRule.from_wire(rule) for rule in r.get("co", ())),
            str(r.get("vs", "")),
            bool(r.get("ol", False)),
            Rule.from_wire(r["lr"]) if r.get("lr") else None,
            PublicAccessBlock.from_wire(r["pb"]) if r.get("pb") else None,
            grants_of(r.get("gr")),
        )

    @property
    def ignores_public_acls(self) -> bool:
        return self.public_block is not None and self.public_block.ignore_public_acls

    @property
    def restricts_public_policy(self) -> bool:
        return self.public_block is not None and self.public_block.restrict_public_buckets

    def shard_names(self) -> list[str]:
        return [index_shard_name(self.id, n) for n in range(self.shards)]


# --- objects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One part of a multipart object, as its manifest lists it."""

    number: int
    head: str
    size: int
    etag: str  # hex MD5 of the part
    checksum: str | None = None  # base64, of the upload's checksum algorithm

    def to_wire(self) -> list[Any]:
        return [self.number, self.head, self.size, self.etag, self.checksum]

    @classmethod
    def from_wire(cls, raw: Any) -> Part:
        number, head, size, etag, *rest = raw
        checksum = rest[0] if rest else None
        return cls(
            int(number),
            str(head),
            int(size),
            str(etag),
            None if checksum is None else str(checksum),
        )


@dataclass(frozen=True)
class Entry:
    """One key of a bucket index: everything about the object but its bytes.

    ``head`` is None for an empty object or one kept in the index (``inline``: no data
    object at all). ``parts`` > 0 marks a
    multipart object, whose head object holds the manifest instead of the first stripe.
    ``version`` is the key of the entry's version record (see ``versions``), None for an
    object of a bucket that was never versioned; a delete marker has no data.
    """

    size: int
    etag: str  # without quotes: hex MD5, or hex-of-MD5s "-N"
    mtime: float
    owner: str
    owner_id: str
    head: str | None
    stripe: int = STRIPE_SIZE
    parts: int = 0
    manifest_size: int = 0  # bytes of the manifest in the head object (multipart)
    headers: dict[str, str] = field(default_factory=dict)  # content-type & co, as sent
    meta: dict[str, str] = field(default_factory=dict)  # x-amz-meta-*, names lower-cased
    checksum: tuple[str, str] | None = None  # (algorithm, base64 value)
    acl: str = "private"
    tags: dict[str, str] = field(default_factory=dict)
    checksum_type: str = "FULL_OBJECT"  # or COMPOSITE (of a multipart object)
    version: str | None = None
    delete_marker: bool = False
    lock_mode: str | None = None  # object lock retention: GOVERNANCE or COMPLIANCE ...
    lock_until: float = 0.0  # ... until then
    legal_hold: bool | None = None  # None: never set
    grants: tuple[Grant, ...] = ()  # when ``acl`` is "custom"
    # A small object kept in the index (no data object): its bytes are ``data``, stored
    # in the record itself (a version's) or beside the key's entry (see ``index``).
    inline: bool = False
    data: bytes | None = None

    def to_bytes(self) -> bytes:
        record: dict[str, Any] = {
            "z": self.size,
            "e": self.etag,
            "t": self.mtime,
            "o": self.owner,
            "oi": self.owner_id,
            "h": self.head,
        }
        if self.stripe != STRIPE_SIZE:
            record["st"] = self.stripe
        if self.parts:
            record["p"] = self.parts
            record["ms"] = self.manifest_size
        if self.headers:
            record["hd"] = self.headers
        if self.meta:
            record["m"] = self.meta
        if self.checksum:
            record["cs"] = list(self.checksum)
        if self.acl != "private":
            record["a"] = self.acl
        if self.tags:
            record["tg"] = self.tags
        if self.checksum_type != "FULL_OBJECT":
            record["ct"] = self.checksum_type
        if self.version is not None:
            record["v"] = self.version
        if self.delete_marker:
            record["dm"] = True
        if self.lock_mode is not None:
            record["lm"] = self.lock_mode
            record["lu"] = self.lock_until
        if self.legal_hold is not None:
            record["lh"] = self.legal_hold
        if self.grants:
            record["gr"] = [g.to_wire() for g in self.grants]
        if self.inline:
            record["in"] = True
        if self.data is not None:
            record["d"] = self.data
        return pack(record)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Entry:
        r = unpack(raw)
        try:
            checksum = r.get("cs")
            return cls(
                size=int(r["z"]),
                etag=str(r["e"]),
                mtime=float(r["t"]),
                owner=str(r["o"]),
                owner_id=str(r["oi"]),
                head=None if r["h"] is None else str(r["h"]),
                stripe=int(r.get("st", STRIPE_SIZE)),
                parts=int(r.get("p", 0)),
                manifest_size=int(r.get("ms", 0)),
                headers={str(k): str(v) for k, v in r.get("hd", {}).items()},
                meta={str(k): str(v) for k, v in r.get("m", {}).items()},
                checksum=(str(checksum[0]), str(checksum[1])) if checksum else None,
                acl=str(r.get("a", "private")),
                tags={str(k): str(v) for k, v in r.get("tg", {}).items()},
                checksum_type=str(r.get("ct", "FULL_OBJECT")),
                version=None if r.get("v") is None else str(r["v"]),
                delete_marker=bool(r.get("dm", False)),
                lock_mode=None if r.get("lm") is None else str(r["lm"]),
                lock_until=float(r.get("lu", 0.0)),
                legal_hold=None if r.get("lh") is None else bool(r["lh"]),
                grants=grants_of(r.get("gr")),
                inline=bool(r.get("in", False)),
                data=bytes(r["d"]) if r.get("d") is not None else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CorruptRecord(f"bad object entry: {exc}") from None

    @property
    def quoted_etag(self) -> str:
        return f'"{self.etag}"'


def pack_manifest(parts: list[Part]) -> bytes:
    return msgpack.packb([p.to_wire() for p in parts], use_bin_type=True)


def _unpack_list(raw: bytes, what: str, build: Callable[[Any], T]) -> list[T]:
    """A msgpack list of records, each made by `build`; CorruptRecord names `what`."""
    try:
        return [build(item) for item in msgpack.unpackb(raw, raw=False)]
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
    ) as exc:
        raise CorruptRecord(f"bad {what}: {exc}") from None


def unpack_manifest(raw: bytes) -> list[Part]:
    return _unpack_list(raw, "multipart manifest", Part.from_wire)


# --- multipart uploads ---------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """A multipart upload in progress (what CreateMultipartUpload was told)."""

    upload_id: str
    bucket: str
    bucket_id: str
    key: str
    initiated: float
    owner: str
    owner_id: str
    headers: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    acl: str = "private"
    tags: dict[str, str] = field(default_factory=dict)
    checksum_algorithm: str | None = None
    checksum_type: str | None = None
    lock_mode: str | None = None
    lock_until: float = 0.0
    legal_hold: bool | None = None
    grants: tuple[Grant, ...] = ()

    def to_bytes(self) -> bytes:
        return pack(
            {
                "gr": [g.to_wire() for g in self.grants],
                "lm": self.lock_mode,
                "lu": self.lock_until,
                "lh": self.legal_hold,
                "u": self.upload_id,
                "b": self.bucket,
                "bi": self.bucket_id,
                "k": self.key,
                "t": self.initiated,
                "o": self.owner,
                "oi": self.owner_id,
                "hd": self.headers,
                "m": self.meta,
                "a": self.acl,
                "tg": self.tags,
                "ca": self.checksum_algorithm,
                "ct": self.checksum_type,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Upload:
        r = unpack(raw)
        try:
            return cls(
                upload_id=str(r["u"]),
                bucket=str(r["b"]),
                bucket_id=str(r["bi"]),
                key=str(r["k"]),
                initiated=float(r["t"]),
                owner=str(r["o"]),
                owner_id=str(r["oi"]),
                headers={str(k): str(v) for k, v in r.get("hd", {}).items()},
                meta={str(k): str(v) for k, v in r.get("m", {}).items()},
                acl=str(r.get("a", "private")),
                tags={str(k): str(v) for k, v in r.get("tg", {}).items()},
                checksum_algorithm=r.get("ca"),
                checksum_type=r.get("ct"),
                lock_mode=None if r.get("lm") is None else str(r["lm"]),
                lock_until=float(r.get("lu", 0.0)),
                legal_hold=None if r.get("lh") is None else bool(r["lh"]),
                grants=grants_of(r.get("gr")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"bad upload record: {exc}") from None


@dataclass(frozen=True)
class PartEntry:
    """An uploaded part: where its bytes are and their MD5."""

    number: int
    head: str | None
    size: int
    etag: str
    mtime: float
    checksum: tuple[str, str] | None = None

    def to_bytes(self) -> bytes:
        return pack(
            {
                "n": self.number,
                "h": self.head,
                "z": self.size,
                "e": self.etag,
                "t": self.mtime,
                "cs": list(self.checksum) if self.checksum else None,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> PartEntry:
        r = unpack(raw)
        try:
            checksum = r.get("cs")
            return cls(
                number=int(r["n"]),
                head=None if r["h"] is None else str(r["h"]),
                size=int(r["z"]),
                etag=str(r["e"]),
                mtime=float(r["t"]),
                checksum=(str(checksum[0]), str(checksum[1])) if checksum else None,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CorruptRecord(f"bad part entry: {exc}") from None


@dataclass(frozen=True)
class UploadRef:
    """What the bucket's uploads index keeps of an upload (enough to list it)."""

    upload_id: str
    initiated: float
    owner: str
    owner_id: str


def pack_upload_refs(refs: list[UploadRef]) -> bytes:
    ordered = sorted(refs, key=lambda r: r.upload_id)
    return msgpack.packb(
        [[r.upload_id, r.initiated, r.owner, r.owner_id] for r in ordered], use_bin_type=True
    )


def unpack_upload_refs(raw: bytes | None) -> list[UploadRef]:
    if raw is None:
        return []
    return _unpack_list(raw, "upload list", _upload_ref)


def _upload_ref(item: Any) -> UploadRef:
    upload_id, initiated, owner, owner_id = item
    return UploadRef(str(upload_id), float(initiated), str(owner), str(owner_id))


# --- garbage ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Garbage:
    """Data objects to delete: a striped data object, or a multipart object's head whose
    manifest names its parts (``parts`` > 0)."""

    head: str
    size: int
    stripe: int = STRIPE_SIZE
    parts: int = 0
    manifest_size: int = 0

    def to_bytes(self) -> bytes:
        return pack(
            {
                "h": self.head,
                "z": self.size,
                "st": self.stripe,
                "p": self.parts,
                "ms": self.manifest_size,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Garbage:
        r = unpack(raw)
        try:
            return cls(str(r["h"]), int(r["z"]), int(r["st"]), int(r["p"]), int(r["ms"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptRecord(f"bad garbage record: {exc}") from None

    @classmethod
    def of_entry(cls, entry: Entry) -> Garbage | None:
        if entry.head is None:
            return None
        return cls(entry.head, entry.size, entry.stripe, entry.parts, entry.manifest_size)

    @classmethod
    def of_part(cls, part: PartEntry) -> Garbage | None:
        if part.head is None:
            return None
        return cls(part.head, part.size)


def stripe_count(size: int, stripe: int) -> int:
    return max(1, -(-size // stripe)) if size else 0
