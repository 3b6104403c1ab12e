"""What the object store is asked to do and what it answers: one dataclass per kind of
transaction (a client's request on the primary, its forward to a replica, a recovered or
repaired object's whole state, a PG's reset log or removal), and the whole-object state
recovery moves between daemons, with its checked wire form.

``ObjectStore.apply_batch`` (:mod:`store.osd.objectstore`) applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from store.errors import Code, StoreError
from store.osd.ops import (
    MAX_OBJECT_SIZE,
    Cond,
    InvalidRequest,
    Op,
    parse_omap_untrusted,
    parse_version_untrusted,
    parse_xattrs_untrusted,
    validate_object_name,
)
from store.osd.pglog import LogEntry
from store.osd.pgsplit import PgSplitTxn


class OpFailed(StoreError):
    """An operation that cannot apply; the request fails with ``code`` and changes nothing."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TxnResult:
    code: Code
    results: list[object]
    version: tuple[int, int]
    message: str = ""
    damaged: bool = False  # failed because stored data did not match its checksum


@dataclass(frozen=True)
class ObjectMeta:
    size: int
    version: tuple[int, int]
    mtime: float


@dataclass(frozen=True)
class ObjectState:
    """A whole object (or its tombstone), as recovery moves it between daemons."""

    name: str
    exists: bool
    version: tuple[int, int]
    size: int
    mtime: float
    xattrs: dict[str, bytes] = field(default_factory=dict)
    omap: dict[str, bytes] = field(default_factory=dict)
    data: bytes = b""  # the whole content, holes as zeros; empty unless exists

    def to_wire(self) -> dict[str, object]:
        return {
            "name": self.name,
            "exists": self.exists,
            "version": list(self.version),
            "size": self.size,
            "mtime": self.mtime,
            "xattrs": self.xattrs,
            "omap": self.omap,
            "data": self.data,
        }

    @classmethod
    def from_wire(cls, raw: object) -> ObjectState:
        """Check and decode a peer's map; raises InvalidRequest on anything malformed."""
        if not isinstance(raw, dict) or set(raw) != _STATE_FIELDS:
            raise InvalidRequest(f"an object state is a map of {sorted(_STATE_FIELDS)}")
        exists, size, mtime, data = raw["exists"], raw["size"], raw["mtime"], raw["data"]
        if type(exists) is not bool:
            raise InvalidRequest("object state: exists must be true or false")
        if type(size) is not int or not 0 <= size <= MAX_OBJECT_SIZE:
            raise InvalidRequest(f"object state: size must be 0 to {MAX_OBJECT_SIZE}")
        if type(mtime) not in (int, float) or not math.isfinite(mtime):
            raise InvalidRequest("object state: mtime must be a finite number")
        if type(data) is not bytes or len(data) != size:
            raise InvalidRequest("object state: data must be bytes, exactly size long")
        state = cls(
            validate_object_name(raw["name"]),
            exists,
            parse_version_untrusted(raw["version"]),
            size,
            float(mtime),
            parse_xattrs_untrusted(raw["xattrs"]),
            parse_omap_untrusted(raw["omap"], limit=None),
            data,
        )
        if not exists and (size or state.xattrs or state.omap):
            raise InvalidRequest("object state: an absent object has no content")
        return state


_STATE_FIELDS = {"name", "exists", "version", "size", "mtime", "xattrs", "omap", "data"}


@dataclass
class PrimaryTxn:
    """A client's request, on the primary of its PG."""

    pool: int
    pg: int
    name: str
    ops: list[Op]
    cond: Cond | None
    epoch: int
    reqid: str


@dataclass
class ReplicaTxn:
    """The same operation forwarded to a replica, with the version the primary gave it."""

    pool: int
    pg: int
    name: str
    ops: list[Op]
    version: tuple[int, int]
    reqid: str


@dataclass
class ObjectStateTxn:
    """Recovery: install a whole object (or its tombstone) if it is newer than ours.

    ``replace_equal`` (scrub and read repair) also replaces our copy of the *same* version,
    which is damaged. ``authoritative`` installs it whatever our version: the state comes
    from the PG's authoritative history and ours was written in a divergent one (by a
    primary whose writes were never acknowledged) — a rollback."""

    pool: int
    pg: int
    state: ObjectState
    replace_equal: bool = False
    authoritative: bool = False


@dataclass
class PgResetLogTxn:
    """After recovery: this PG's history now ends at ``last_version``, with ``entries`` (the
    log of the peer it was copied from) as its log."""

    pool: int
    pg: int
    last_version: tuple[int, int]
    entries: list[LogEntry] = field(default_factory=list)


@dataclass
class PgRemoveTxn:
    """The PG has moved away: forget its objects, tombstones and log."""

    pool: int
    pg: int


@dataclass
class PgScrubStampTxn:
    """When the PG was last scrubbed and deep-scrubbed (unix time), kept across restarts."""

    pool: int
    pg: int
    last_scrub: float
    last_deep_scrub: float


Txn = (
    PrimaryTxn
    | ReplicaTxn
    | ObjectStateTxn
    | PgResetLogTxn
    | PgRemoveTxn
    | PgSplitTxn
    | PgScrubStampTxn
)
