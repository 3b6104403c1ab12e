"""Names, sizes and the header of an image; no I/O.

Objects of an image in its pool (the names Ceph RBD uses, so operators recognise them):

- ``rbd_directory``: one per pool; its omap maps ``name_<image name>`` to the image id;
- ``rbd_header.<id>``: the header; its data is the msgpack map of :class:`ImageHeader`;
- ``rbd_data.<id>.<index as 16 hex digits>``: data object ``index``, holding image bytes
  ``[index * object_size, (index + 1) * object_size)``. It exists only once written.

The header comes back from the network, so it is decoded as untrusted bytes: a header
that does not decode is reported as damaged, never guessed at.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from store.image.errors import DamagedHeader, InvalidImageArgument
from store.image.lock import Lock

DIRECTORY = "rbd_directory"
DIRECTORY_KEY_PREFIX = "name_"
HEADER_PREFIX = "rbd_header."
DATA_PREFIX = "rbd_data."

KiB, MiB, GiB, TiB, PiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40, 1 << 50
DEFAULT_OBJECT_SIZE = 4 * MiB
MIN_OBJECT_SIZE = 4 * KiB
MAX_OBJECT_SIZE = 32 * MiB  # NBD's largest preferred block size
MAX_IMAGE_SIZE = 1 << 60
MAX_NAME_BYTES = 256
HEADER_FORMAT = 1
MAX_HEADER_BYTES = 4096
ID_HEX_DIGITS = 16

_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": PiB}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\s*", re.IGNORECASE)
_ID = re.compile(rf"[0-9a-f]{{{ID_HEX_DIGITS}}}")


# --- sizes ---------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``10G``, ``4M``, ``512K``, ``1.5T``, ``4096``: binary units (G = GiB), as rbd reads them."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InvalidImageArgument(f"{text!r} is not a size: write e.g. 10G, 512M, 4096")
    number, unit = match.groups()
    value = float(number) * _UNITS[unit.upper()]
    if not math.isfinite(value) or value != int(value):
        raise InvalidImageArgument(f"{text!r} is not a whole number of bytes")
    return int(value)


def format_size(size: int) -> str:
    for unit, scale in (("PiB", PiB), ("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{size} B"


def check_image_size(size: int) -> int:
    if not 0 <= size <= MAX_IMAGE_SIZE:
        raise InvalidImageArgument(f"an image size must be 0 to {MAX_IMAGE_SIZE} bytes, not {size}")
    return size


def check_object_size(size: int) -> int:
    if size & (size - 1) or not MIN_OBJECT_SIZE <= size <= MAX_OBJECT_SIZE:
        raise InvalidImageArgument(
            f"the object size must be a power of two from {format_size(MIN_OBJECT_SIZE)} "
            f"to {format_size(MAX_OBJECT_SIZE)}, not {size} bytes"
        )
    return size


# --- names ---------------------------------------------------------------------------


def check_image_name(name: str) -> str:
    if not name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise InvalidImageArgument(f"an image name is 1 to {MAX_NAME_BYTES} bytes, not {name!r}")
    if "/" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidImageArgument(f"an image name has no '/' or control characters: {name!r}")
    return name


def parse_image_spec(spec: str) -> tuple[str, str]:
    """``POOL/NAME`` -> (pool, name)."""
    pool, sep, name = spec.partition("/")
    if not sep or not pool:
        raise InvalidImageArgument(f"name the image as POOL/NAME, not {spec!r}")
    return pool, check_image_name(name)


def new_image_id() -> str:
    return secrets.token_hex(ID_HEX_DIGITS // 2)


def check_image_id(raw: object) -> str:
    if not isinstance(raw, str) or not _ID.fullmatch(raw):
        raise DamagedHeader(f"{raw!r} is not an image id")
    return raw


def directory_key(name: str) -> str:
    return DIRECTORY_KEY_PREFIX + name


def header_object(image_id: str) -> str:
    return HEADER_PREFIX + image_id


def data_prefix(image_id: str) -> str:
    return f"{DATA_PREFIX}{image_id}."


def data_object(image_id: str, index: int) -> str:
    return f"{DATA_PREFIX}{image_id}.{index:016x}"


def data_index(name: str, image_id: str) -> int | None:
    """The index of a data object of this image named ``name``, or None."""
    prefix = data_prefix(image_id)
    tail = name[len(prefix) :]
    if not name.startswith(prefix) or len(tail) != 16:
        return None
    try:
        return int(tail, 16)
    except ValueError:
        return None


# --- the header ----------------------------------------------------------------------


@dataclass(frozen=True)
class ImageHeader:
    id: str
    name: str
    size: int
    object_size: int
    created: float
    lock: Lock | None = None
    removing: bool = False  # `image rm` has begun: nobody may open it any more

    @property
    def object_count(self) -> int:
        """How many data objects the image spans (the last one may be partial)."""
        return -(-self.size // self.object_size)

    def with_lock(self, lock: Lock | None) -> ImageHeader:
        return replace(self, lock=lock)

    def encode(self) -> bytes:
        lock = None
        if self.lock is not None:
            lock = {
                "holder": self.lock.holder,
                "owner": self.lock.owner,
                "expires": self.lock.expires,
            }
        return msgpack.packb(
            {
                "format": HEADER_FORMAT,
                "id": self.id,
                "name": self.name,
                "size": self.size,
                "object_size": self.object_size,
                "created": self.created,
                "lock": lock,
                "removing": self.removing,
            }
        )

    @classmethod
    def decode_untrusted(cls, raw: bytes, what: str) -> ImageHeader:
        """Decode header bytes; raises DamagedHeader naming ``what`` on anything wrong."""
        try:
            return cls._decode(raw)
        except DamagedHeader as exc:
            raise DamagedHeader(f"the header of image {what} is damaged: {exc}") from None

    @classmethod
    def _decode(cls, raw: bytes) -> ImageHeader:
        try:
            body = msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types
            raise DamagedHeader(f"not msgpack ({type(exc).__name__})") from None
        if not isinstance(body, dict):
            raise DamagedHeader("not a map")
        if body.get("format") != HEADER_FORMAT:
            raise DamagedHeader(f"unknown format {body.get('format')!r}")
        name = _field(body, "name", str)
        try:
            check_image_name(name)
        except InvalidImageArgument as exc:
            raise DamagedHeader(str(exc)) from None
        size, object_size = _field(body, "size", int), _field(body, "object_size", int)
        try:
            check_image_size(size)
            check_object_size(object_size)
        except InvalidImageArgument as exc:
            raise DamagedHeader(str(exc)) from None
        return cls(
            id=check_image_id(body.get("id")),
            name=name,
            size=size,
            object_size=object_size,
            created=_number(body, "created"),
            lock=_lock(body.get("lock")),
            removing=_field(body, "removing", bool),
        )


def _field(body: dict[Any, Any], key: str, kind: type) -> Any:
    value = body.get(key)
    # bool is an int in Python, never a number here (and an int is never a bool).
    if type(value) is not kind:
        raise DamagedHeader(f"{key} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _number(body: dict[Any, Any], key: str) -> float:
    value = body.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise DamagedHeader(f"{key} must be a finite number")
    return float(value)


def _lock(raw: object) -> Lock | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise DamagedHeader("lock must be a map or nil")
    holder, owner = _field(raw, "holder", str), _field(raw, "owner", str)
    if not holder or len(holder) > 256 or len(owner) > 1024:
        raise DamagedHeader("lock holder or owner of a bad length")
    return Lock(holder=holder, owner=owner, expires=_number(raw, "expires"))
