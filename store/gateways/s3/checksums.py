"""Body digests: the MD5 behind an ETag, Content-MD5 and the ``x-amz-checksum-*`` family.

A :class:`BodyDigests` is fed the decoded body piece by piece while it streams to the
cluster, and :meth:`BodyDigests.finish` compares what it computed with what the client
declared (in headers, or in an aws-chunked trailer). Nothing is held but hash states.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import crc32c as _crc32c
import xxhash

from store.gateways.s3 import errors

# Algorithm name (as in x-amz-checksum-<name>) -> digest length in bytes.
ALGORITHMS: dict[str, int] = {
    "crc32": 4,
    "crc32c": 4,
    "crc64nvme": 8,
    "sha1": 20,
    "sha256": 32,
    "sha512": 64,
    "md5": 16,
    "xxhash64": 8,
    "xxhash3": 8,
    "xxhash128": 16,
}
CRCS = frozenset({"crc32", "crc32c", "crc64nvme"})
# Reflected polynomials and widths, for combining the CRCs of consecutive pieces.
_CRC_SHAPES = {
    "crc32": (0xEDB88320, 32),
    "crc32c": (0x82F63B78, 32),
    "crc64nvme": (0x9A6C9329AC4BC9B5, 64),
}


def _crc64nvme_table() -> list[int]:
    poly = 0x9A6C9329AC4BC9B5  # 0xAD93D23594C93659 bit-reversed
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC64_TABLE = _crc64nvme_table()
_MASK64 = (1 << 64) - 1


class _Crc:
    """CRC-32, CRC-32C or CRC-64/NVME behind a hashlib-like update/digest."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = _MASK64 if name == "crc64nvme" else 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self.name == "crc32":
            self.value = zlib.crc32(data, self.value)
        elif self.name == "crc32c":
            self.value = _crc32c.crc32c(data, self.value)
        else:
            # Pure Python: correct but slow; used only when a client asks for CRC-64/NVME.
            crc, table = self.value, _CRC64_TABLE
            for byte in data:
                crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
            self.value = crc

    def digest(self) -> bytes:
        if self.name == "crc64nvme":
            return (self.value ^ _MASK64).to_bytes(8, "big")
        return self.value.to_bytes(4, "big")


class _XxHash:
    def __init__(self, name: str) -> None:
        self._hash = {
            "xxhash64": xxhash.xxh64,
            "xxhash3": xxhash.xxh3_64,
            "xxhash128": xxhash.xxh3_128,
        }[name]()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


def new_hasher(name: str) -> _Crc | _XxHash | hashlib._Hash:
    if name in ("sha1", "sha256", "sha512", "md5"):
        return hashlib.new(name)
    if name.startswith("xxhash"):
        return _XxHash(name)
    return _Crc(name)


# --- combining CRCs --------------------------------------------------------------------------
# The CRC of A+B from crc(A), crc(B) and len(B), as zlib's crc32_combine does: appending
# len(B) zero bytes to A is a linear map over GF(2), a matrix raised to len(B) by
# squaring. Matrices are lists of columns; the map for one length is cached, since the
# parts of an upload are mostly of one size.


def _times(matrix: list[int], vector: int) -> int:
    result, i = 0, 0
    while vector:
        if vector & 1:
            result ^= matrix[i]
        vector >>= 1
        i += 1
    return result


def _compose(a: list[int], b: list[int]) -> list[int]:
    return [_times(a, column) for column in b]


@lru_cache(maxsize=64)
def _zeros_operator(name: str, length: int) -> tuple[int, ...]:
    poly, width = _CRC_SHAPES[name]
    bit = [poly] + [1 << n for n in range(width - 1)]  # one zero bit
    byte = bit
    for _ in range(3):
        byte = _compose(byte, byte)
    result: list[int] | None = None
    power = byte
    while length:
        if length & 1:
            result = power if result is None else _compose(power, result)
        length >>= 1
        if length:
            power = _compose(power, power)
    assert result is not None
    return tuple(result)


def crc_combine(name: str, first: bytes, second: bytes, second_length: int) -> bytes:
    """The CRC (digest bytes) of two pieces, from theirs and the second one's length."""
    if second_length == 0:
        return first
    a, b = int.from_bytes(first, "big"), int.from_bytes(second, "big")
    combined = _times(list(_zeros_operator(name, second_length)), a) ^ b
    return combined.to_bytes(len(first), "big")


def decode_digest(algorithm: str, value: str) -> bytes | None:
    """The raw digest of a base64 checksum value, or None when it is not one."""
    return _decode_b64(value, ALGORITHMS[algorithm])


def digest_b64(name: str, data: bytes) -> str:
    hasher = new_hasher(name)
    hasher.update(data)
    return base64.b64encode(hasher.digest()).decode()


def _decode_b64(value: str, length: int) -> bytes | None:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == length else None


@dataclass(frozen=True)
class Expected:
    """What the client declared about a body, from the request headers."""

    md5: bytes | None  # Content-MD5
    algorithm: str | None  # the x-amz-checksum-* algorithm, lower-case
    value: bytes | None  # its value, or None when it comes in a trailer (or not at all)
    in_trailer: bool = False


def expected_from_headers(headers: Sequence[tuple[str, str]]) -> Expected:
    """Parse Content-MD5, x-amz-checksum-*, x-amz-sdk-checksum-algorithm and x-amz-trailer."""
    md5: bytes | None = None
    found: dict[str, str] = {}
    sdk_algorithm: str | None = None
    trailer: str | None = None
    for name, value in headers:
        if name == "content-md5":
            md5 = _decode_b64(value, 16)
            if md5 is None:
                raise errors.invalid_digest()
        elif name.startswith("x-amz-checksum-") and name != "x-amz-checksum-type":
            if name == "x-amz-checksum-mode":
                continue
            algorithm = name[len("x-amz-checksum-") :]
            if algorithm not in ALGORITHMS:
                raise errors.invalid_request(f"Value for {name} header is invalid.")
            found[algorithm] = value
        elif name == "x-amz-sdk-checksum-algorithm":
            sdk_algorithm = value.strip().lower()
            if sdk_algorithm not in ALGORITHMS:
                raise errors.invalid_request(
                    "Value for x-amz-sdk-checksum-algorithm header is invalid."
                )
        elif name == "x-amz-trailer":
            trailer = value.strip().lower()
    if len(found) > 1:
        raise errors.invalid_request(
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        )
    if trailer is not None:
        if not trailer.startswith("x-amz-checksum-") or trailer[15:] not in ALGORITHMS:
            raise errors.invalid_request(
                "The value specified in the x-amz-trailer header is not supported"
            )
        if found:
            raise errors.invalid_request(
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
            )
        algorithm = trailer[15:]
        if sdk_algorithm is not None and sdk_algorithm != algorithm:
            raise errors.invalid_request(
                "Value for x-amz-sdk-checksum-algorithm header is invalid."
            )
        return Expected(md5, algorithm, None, in_trailer=True)
    if found:
        algorithm, raw = next(iter(found.items()))
        decoded = _decode_b64(raw, ALGORITHMS[algorithm])
        if decoded is None:
            # A value that is not even a digest cannot match the body.
            raise errors.bad_digest(
                f"The {algorithm.upper()} you specified did not match the calculated checksum."
            )
        if sdk_algorithm is not None and sdk_algorithm != algorithm:
            raise errors.invalid_request(
                "Value for x-amz-sdk-checksum-algorithm header is invalid."
            )
        return Expected(md5, algorithm, decoded)
    return Expected(md5, sdk_algorithm, None)


class BodyDigests:
    """The digests of one body, computed as it streams."""

    def __init__(self, expected: Expected, *, payload_sha256: str | None = None) -> None:
        self.expected = expected
        self.md5 = hashlib.md5()
        self.size = 0
        self.payload_sha256 = payload_sha256
        self._sha256 = hashlib.sha256() if payload_sha256 else None
        self._checksum = new_hasher(expected.algorithm) if expected.algorithm else None
        self._feeders: list[Callable[[bytes], None]] = [self.md5.update]
        if self._sha256 is not None:
            self._feeders.append(self._sha256.update)
        if self._checksum is not None:
            self._feeders.append(self._checksum.update)

    def update(self, data: bytes) -> None:
        self.size += len(data)
        for feed in self._feeders:
            feed(data)

    def finish(self, trailers: dict[str, str] | None = None) -> tuple[str, tuple[str, str] | None]:
        """Check every declared digest; returns the ETag (hex MD5) and (algorithm, base64)."""
        if self._sha256 is not None and self.payload_sha256 is not None:
            computed = self._sha256.hexdigest()
            if computed != self.payload_sha256.lower():
                raise errors.content_sha256_mismatch(self.payload_sha256, computed)
        md5 = self.md5.digest()
        if self.expected.md5 is not None and md5 != self.expected.md5:
            raise errors.bad_digest()
        checksum: tuple[str, str] | None = None
        if self._checksum is not None:
            algorithm = self.expected.algorithm
            assert algorithm is not None
            computed_raw = self._checksum.digest()
            declared = self.expected.value
            if self.expected.in_trailer:
                raw = (trailers or {}).get(f"x-amz-checksum-{algorithm}")
                declared = _decode_b64(raw, ALGORITHMS[algorithm]) if raw is not None else None
                if declared is None:
                    raise errors.invalid_request(
                        f"Value for x-amz-checksum-{algorithm} trailing header is invalid."
                    )
            if declared is not None and declared != computed_raw:
                raise errors.bad_digest(
                    f"The {algorithm.upper()} you specified did not match the calculated checksum."
                )
            checksum = (algorithm, base64.b64encode(computed_raw).decode())
        return md5.hex(), checksum
