"""The operations a request applies to one object, and their parser.

A request names one object and carries a list of operations applied atomically, in
order. On the wire each operation is a msgpack array ``[name, *args]``; an optional
condition is a map ``{"exists": bool, "version": [epoch, seq]}``. Everything here
comes from the network, so the parsers check every type, count and limit and raise
only :class:`InvalidRequest`, whose ``code`` says which reply the sender gets.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from store.errors import Code, ProtocolError

MAX_OBJECT_SIZE = 128 * 1024 * 1024
MAX_READ_LENGTH = 16 * 1024 * 1024
MAX_VALUE_SIZE = 64 * 1024
MAX_NAME_BYTES = 1024
MAX_OMAP_KEY_BYTES = 2048  # an S3 key (1024) with a version record's affixes fits
MAX_XATTR_KEY_BYTES = 256
MAX_OMAP_LIST = 10_000
MAX_KEYS_PER_OP = 10_000
MAX_OPS = 64
# Offsets and lengths past this are nonsense for a 128 MiB object, and it keeps every
# number a signed 64-bit integer wherever it is stored.
MAX_INTEGER = 2**63 - 1


class InvalidRequest(ProtocolError):
    """A request that does not parse or breaks a limit; answered with ``code``."""

    def __init__(self, message: str, code: Code = Code.EINVAL) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# --- operations ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    WIRE: ClassVar[str] = "read"
    MUTATING: ClassVar[bool] = False
    offset: int
    length: int

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.offset, self.length]


@dataclass(frozen=True, slots=True)
class Stat:
    WIRE: ClassVar[str] = "stat"
    MUTATING: ClassVar[bool] = False

    def to_wire(self) -> list[object]:
        return [self.WIRE]


@dataclass(frozen=True, slots=True)
class GetXattrs:
    WIRE: ClassVar[str] = "getxattrs"
    MUTATING: ClassVar[bool] = False

    def to_wire(self) -> list[object]:
        return [self.WIRE]


@dataclass(frozen=True, slots=True)
class OmapGet:
    WIRE: ClassVar[str] = "omap_get"
    MUTATING: ClassVar[bool] = False
    keys: tuple[str, ...]

    def to_wire(self) -> list[object]:
        return [self.WIRE, list(self.keys)]


@dataclass(frozen=True, slots=True)
class OmapList:
    WIRE: ClassVar[str] = "omap_list"
    MUTATING: ClassVar[bool] = False
    start_after: str | None
    max: int
    prefix: str

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.start_after, self.max, self.prefix]


@dataclass(frozen=True, slots=True)
class Create:
    WIRE: ClassVar[str] = "create"
    MUTATING: ClassVar[bool] = True
    exclusive: bool

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.exclusive]


@dataclass(frozen=True, slots=True)
class Write:
    WIRE: ClassVar[str] = "write"
    MUTATING: ClassVar[bool] = True
    offset: int
    data: bytes | memoryview  # a view: a replicated write's data, where it was received
    # The checksums of the blocks the data covers whole, when known (store.osd.blocksums).
    sums: array[int] | None = field(default=None, compare=False, repr=False)

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.offset, self.data]


@dataclass(frozen=True, slots=True)
class WriteFull:
    WIRE: ClassVar[str] = "write_full"
    MUTATING: ClassVar[bool] = True
    data: bytes | memoryview
    sums: array[int] | None = field(default=None, compare=False, repr=False)  # as Write's

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.data]


@dataclass(frozen=True, slots=True)
class Staged:
    """A write of data staged with the primary beforehand (``store.osd.staging``): the
    front replaces it by a ``write`` (or, with ``full``, a ``write_full``) of those bytes
    before anything applies it, so it is never logged, forwarded or stored as such."""

    WIRE: ClassVar[str] = "staged"
    MUTATING: ClassVar[bool] = True
    token: int
    offset: int
    length: int
    full: bool

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.token, self.offset, self.length, self.full]


@dataclass(frozen=True, slots=True)
class Truncate:
    WIRE: ClassVar[str] = "truncate"
    MUTATING: ClassVar[bool] = True
    size: int

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.size]


@dataclass(frozen=True, slots=True)
class Zero:
    WIRE: ClassVar[str] = "zero"
    MUTATING: ClassVar[bool] = True
    offset: int
    length: int

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.offset, self.length]


@dataclass(frozen=True, slots=True)
class Delete:
    WIRE: ClassVar[str] = "delete"
    MUTATING: ClassVar[bool] = True

    def to_wire(self) -> list[object]:
        return [self.WIRE]


@dataclass(frozen=True, slots=True)
class SetXattr:
    WIRE: ClassVar[str] = "setxattr"
    MUTATING: ClassVar[bool] = True
    key: str
    value: bytes

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.key, self.value]


@dataclass(frozen=True, slots=True)
class RmXattr:
    WIRE: ClassVar[str] = "rmxattr"
    MUTATING: ClassVar[bool] = True
    key: str

    def to_wire(self) -> list[object]:
        return [self.WIRE, self.key]


@dataclass(frozen=True)
class OmapSet:
    """Not hashable (it holds a dict); compare it, do not put it in a set."""

    WIRE: ClassVar[str] = "omap_set"
    MUTATING: ClassVar[bool] = True
    entries: dict[str, bytes]

    def to_wire(self) -> list[object]:
        return [self.WIRE, dict(self.entries)]


@dataclass(frozen=True, slots=True)
class OmapRm:
    WIRE: ClassVar[str] = "omap_rm"
    MUTATING: ClassVar[bool] = True
    keys: tuple[str, ...]

    def to_wire(self) -> list[object]:
        return [self.WIRE, list(self.keys)]


@dataclass(frozen=True, slots=True)
class OmapClear:
    WIRE: ClassVar[str] = "omap_clear"
    MUTATING: ClassVar[bool] = True

    def to_wire(self) -> list[object]:
        return [self.WIRE]


Op = (
    Read
    | Stat
    | GetXattrs
    | OmapGet
    | OmapList
    | Create
    | Write
    | WriteFull
    | Staged
    | Truncate
    | Zero
    | Delete
    | SetXattr
    | RmXattr
    | OmapSet
    | OmapRm
    | OmapClear
)


def is_mutating(ops: Sequence[Op]) -> bool:
    return any(op.MUTATING for op in ops)


def leaves_absent(ops: Sequence[Op]) -> bool:
    """Whether a request that applies leaves its object deleted."""
    # Every mutating operation but delete leaves the object in place, so the last
    # mutating operation alone decides.
    for op in reversed(ops):
        if op.MUTATING:
            return isinstance(op, Delete)
    return False


def ops_to_wire(ops: Sequence[Op]) -> list[list[object]]:
    return [op.to_wire() for op in ops]


# The data of a write as large as this leaves a replicated write's msgpack arguments
# for the frame's raw tail (store.wire.frames): never packed, unpacked or copied for it.
DETACH_DATA = 64 * 1024
_DATA_AT = {Write.WIRE: 2, WriteFull.WIRE: 1}  # where a write's data is in its wire form


def detach_data(
    raw_ops: list[list[object]], least: int = DETACH_DATA
) -> tuple[list[list[object]], list[bytes | memoryview]]:
    """Operations in wire form with the data of each write of ``least`` bytes or more
    replaced by its length, and those data in order: the tail to send after them."""
    tail: list[bytes | memoryview] = []
    out: list[list[object]] = []
    for op in raw_ops:
        at = _DATA_AT.get(op[0]) if op and type(op[0]) is str else None
        if at is not None and len(op) > at:
            data = op[at]
            if isinstance(data, bytes | memoryview) and len(data) >= least:
                op = [*op[:at], len(data), *op[at + 1 :]]
                tail.append(data)
        out.append(op)
    return out, tail


def attach_data_untrusted(raw_ops: object, tail: memoryview) -> object:
    """Undo ``detach_data``: each write whose data is a length takes that many bytes of
    ``tail`` (as views), in order; the lengths must add up to the tail exactly."""
    if not isinstance(raw_ops, list):
        raise InvalidRequest(f"operations must be an array, not {type(raw_ops).__name__}")
    used = 0
    out: list[object] = []
    for op in raw_ops:
        if isinstance(op, list) and op and type(op[0]) is str:
            at = _DATA_AT.get(op[0])
            if at is not None and len(op) > at and type(op[at]) is int:
                length = op[at]
                if not 0 <= length <= len(tail) - used:
                    raise InvalidRequest("a write's detached data runs past the frame's tail")
                op = [*op[:at], tail[used : used + length], *op[at + 1 :]]
                used += length
        out.append(op)
    if used != len(tail):
        raise InvalidRequest(f"{len(tail) - used} bytes of the frame's tail belong to no write")
    return out


# --- conditions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cond:
    """What must hold of the object before a request applies; None means "anything"."""

    exists: bool | None = None
    version: tuple[int, int] | None = None

    def holds(self, exists: bool, version: tuple[int, int]) -> bool:
        """``version`` is the object's, or (0, 0) for an absent object."""
        if self.exists is not None and self.exists != exists:
            return False
        return self.version is None or self.version == version

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {}
        if self.exists is not None:
            wire["exists"] = self.exists
        if self.version is not None:
            wire["version"] = list(self.version)
        return wire


# --- parsers ------------------------------------------------------------------------


def _integer(raw: object, what: str, limit: int = MAX_INTEGER) -> int:
    # bool is an int in Python but never a number on our wire.
    if type(raw) is not int:
        raise InvalidRequest(f"{what} must be an integer, not {type(raw).__name__}")
    if not 0 <= raw <= limit:
        raise InvalidRequest(f"{what} must be between 0 and {limit}, not {raw}")
    return raw


def _boolean(raw: object, what: str) -> bool:
    if type(raw) is not bool:
        raise InvalidRequest(f"{what} must be true or false, not {type(raw).__name__}")
    return raw


def _utf8_length(raw: str, what: str) -> int:
    try:
        return len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(f"{what} is not valid UTF-8 text") from None


def _key(raw: object, what: str, limit: int) -> str:
    if type(raw) is not str:
        raise InvalidRequest(f"{what} must be text, not {type(raw).__name__}")
    if _utf8_length(raw, what) > limit:
        raise InvalidRequest(f"{what} is longer than {limit} bytes")
    return raw


def _xattr_key(raw: object) -> str:
    key = _key(raw, "xattr key", MAX_XATTR_KEY_BYTES)
    if not key:
        raise InvalidRequest("xattr key must not be empty")
    return key


def _omap_key(raw: object) -> str:
    return _key(raw, "omap key", MAX_OMAP_KEY_BYTES)


def _value(raw: object, what: str) -> bytes:
    if type(raw) is not bytes:
        raise InvalidRequest(f"{what} must be bytes, not {type(raw).__name__}")
    if len(raw) > MAX_VALUE_SIZE:
        raise InvalidRequest(f"{what} is larger than {MAX_VALUE_SIZE} bytes", Code.EFBIG)
    return raw


def _data(raw: object) -> bytes | memoryview:
    # msgpack gives bytes; a view is what attach_data_untrusted put in its place.
    if type(raw) is not bytes and type(raw) is not memoryview:
        raise InvalidRequest(f"write data must be bytes, not {type(raw).__name__}")
    if len(raw) > MAX_OBJECT_SIZE:
        raise InvalidRequest(f"write data is larger than {MAX_OBJECT_SIZE} bytes", Code.EFBIG)
    return raw


def _key_list(raw: object) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple):
        raise InvalidRequest(f"omap keys must be a list, not {type(raw).__name__}")
    if len(raw) > MAX_KEYS_PER_OP:
        raise InvalidRequest(f"more than {MAX_KEYS_PER_OP} omap keys in one operation")
    return tuple(_omap_key(key) for key in raw)


def parse_omap_untrusted(raw: object, limit: int | None = MAX_KEYS_PER_OP) -> dict[str, bytes]:
    """A map of omap entries; ``limit`` caps their number (None: no cap)."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"omap entries must be a map, not {type(raw).__name__}")
    if limit is not None and len(raw) > limit:
        raise InvalidRequest(f"more than {limit} omap entries in one operation")
    return {_omap_key(key): _value(value, "omap value") for key, value in raw.items()}


def parse_xattrs_untrusted(raw: object) -> dict[str, bytes]:
    """A whole object's xattrs, as a map."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"xattrs must be a map, not {type(raw).__name__}")
    return {_xattr_key(key): _value(value, "xattr value") for key, value in raw.items()}


def validate_object_name(name: object) -> str:
    if type(name) is not str:
        raise InvalidRequest(f"object name must be text, not {type(name).__name__}")
    size = _utf8_length(name, "object name")
    if not 1 <= size <= MAX_NAME_BYTES:
        raise InvalidRequest(f"object name must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
    return name


def _parse_omap_list(args: list[object]) -> OmapList:
    start_after = None if args[0] is None else _omap_key(args[0])
    limit = _integer(args[1], "omap_list max", MAX_OMAP_LIST)
    return OmapList(start_after, limit, _omap_key(args[2]))


def _parse_read(args: list[object]) -> Read:
    return Read(_integer(args[0], "offset"), _integer(args[1], "read length", MAX_READ_LENGTH))


_PARSERS: dict[str, tuple[int, Callable[[list[object]], Op]]] = {
    "read": (2, _parse_read),
    "stat": (0, lambda a: Stat()),
    "getxattrs": (0, lambda a: GetXattrs()),
    "omap_get": (1, lambda a: OmapGet(_key_list(a[0]))),
    "omap_list": (3, _parse_omap_list),
    "create": (1, lambda a: Create(_boolean(a[0], "exclusive"))),
    "write": (2, lambda a: Write(_integer(a[0], "offset"), _data(a[1]))),
    "write_full": (1, lambda a: WriteFull(_data(a[0]))),
    "truncate": (1, lambda a: Truncate(_integer(a[0], "size"))),
    "zero": (2, lambda a: Zero(_integer(a[0], "offset"), _integer(a[1], "length"))),
    "delete": (0, lambda a: Delete()),
    "setxattr": (2, lambda a: SetXattr(_xattr_key(a[0]), _value(a[1], "xattr value"))),
    "rmxattr": (1, lambda a: RmXattr(_xattr_key(a[0]))),
    "omap_set": (1, lambda a: OmapSet(parse_omap_untrusted(a[0]))),
    "omap_rm": (1, lambda a: OmapRm(_key_list(a[0]))),
    "omap_clear": (0, lambda a: OmapClear()),
}


def _parse_staged(args: list[object]) -> Staged:
    token = _integer(args[0], "stage token")
    offset = _integer(args[1], "offset")
    length = _integer(args[2], "staged length", MAX_OBJECT_SIZE)
    full = _boolean(args[3], "staged full")
    if full and offset != 0:
        raise InvalidRequest("a staged write_full starts at offset 0")
    return Staged(token, offset, length, full)


def _parse_op_untrusted(raw: object, staged: bool = False) -> Op:
    if not isinstance(raw, list | tuple) or not raw:
        raise InvalidRequest("each operation must be a non-empty array [name, *args]")
    name, *args = raw
    parse: Callable[[list[object]], Op]
    if staged and name == Staged.WIRE:
        arity, parse = 4, _parse_staged
    elif type(name) is not str or name not in _PARSERS:
        raise InvalidRequest(f"unknown operation {name!r}")
    else:
        arity, parse = _PARSERS[name]
    if len(args) != arity:
        raise InvalidRequest(f"operation {name} takes {arity} arguments, not {len(args)}")
    return parse(args)


def parse_ops_untrusted(raw: object, *, staged: bool = False) -> list[Op]:
    """The operations of a request; `staged` accepts ``staged`` writes (from clients only:
    the primary resolves them before ordering the write)."""
    if not isinstance(raw, list | tuple):
        raise InvalidRequest(f"operations must be an array, not {type(raw).__name__}")
    if not 1 <= len(raw) <= MAX_OPS:
        raise InvalidRequest(f"a request carries 1 to {MAX_OPS} operations, not {len(raw)}")
    return [_parse_op_untrusted(op, staged) for op in raw]


def parse_version_untrusted(raw: object) -> tuple[int, int]:
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        raise InvalidRequest("a version must be an array [epoch, seq]")
    return (_integer(raw[0], "version epoch"), _integer(raw[1], "version seq"))


def parse_cond_untrusted(raw: object) -> Cond | None:
    """A condition map, or None when there is none (nil or an empty map)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest(f"a condition must be a map, not {type(raw).__name__}")
    unknown = set(raw) - {"exists", "version"}
    if unknown:
        raise InvalidRequest(f"unknown condition {sorted(map(repr, unknown))[0]}")
    if not raw:
        return None
    exists = _boolean(raw["exists"], "condition exists") if "exists" in raw else None
    version = parse_version_untrusted(raw["version"]) if "version" in raw else None
    return Cond(exists, version)
