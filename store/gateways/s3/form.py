"""Reading a ``multipart/form-data`` body as a browser sends it to S3 (POST Object).

The fields before the one named ``file`` are read whole (within a byte budget); the file
is then streamed, never held; whatever follows it is ignored, as S3 does. A part's body
ends at ``CRLF--boundary``: while streaming, the last ``len(delimiter) - 1`` bytes are kept
back until it is known that they do not start the delimiter.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from store.gateways.s3 import errors
from store.gateways.s3.errors import S3Error

MAX_FIELDS_BYTES = 64 * 1024  # all the fields before the file
MAX_PART_HEADERS = 8 * 1024
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def malformed(detail: str = "") -> S3Error:
    message = "The body of your POST request is not well-formed multipart/form-data."
    return errors.S3Error("MalformedPOSTRequest", 400, message + (f" {detail}" if detail else ""))


def boundary_of(content_type: str | None) -> bytes:
    """The boundary a ``multipart/form-data`` Content-Type names."""
    if content_type is None or not content_type.lower().startswith("multipart/form-data"):
        raise malformed("The Content-Type must be multipart/form-data.")
    params = header_params(content_type)
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= 70:
        raise malformed("The Content-Type names no boundary.")
    return boundary.encode("latin-1")


def header_params(value: str) -> dict[str, str]:
    """The ``; name=value`` parameters of a header (names lower-cased, quotes removed)."""
    params: dict[str, str] = {}
    for name, raw in _PARAM.findall(value):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.lower()] = raw
    return params


@dataclass
class FilePart:
    filename: str | None
    content_type: str | None


class FormReader:
    """``await fields()`` first, then iterate ``file_data()`` to the end of the file."""

    def __init__(self, source: AsyncIterable[bytes], boundary: bytes) -> None:
        self._source = source.__aiter__()
        # The body starts with "--boundary": a CRLF in front makes every delimiter alike.
        self._buffer = bytearray(b"\r\n")
        self._delimiter = b"\r\n--" + boundary

    async def _more(self) -> None:
        try:
            self._buffer += await self._source.__anext__()
        except StopAsyncIteration:
            raise malformed("The body ended early.") from None

    async def _until(self, marker: bytes, limit: int, too_large: S3Error) -> bytes:
        """The bytes before ``marker`` (which is consumed), at most ``limit`` of them."""
        while True:
            at = self._buffer.find(marker)
            if at >= 0:
                if at > limit:
                    raise too_large
                found = bytes(self._buffer[:at])
                del self._buffer[: at + len(marker)]
                return found
            if len(self._buffer) > limit + len(marker):
                raise too_large
            await self._more()

    async def _next_part(self) -> dict[str, str] | None:
        """After a delimiter: the next part's headers, or None at the closing one."""
        while len(self._buffer) < 2:
            await self._more()
        if self._buffer[:2] == b"--":
            return None
        line = await self._until(b"\r\n", 80, malformed())  # transport padding, then CRLF
        if line.strip(b" \t"):
            raise malformed()
        raw = await self._until(b"\r\n\r\n", MAX_PART_HEADERS, malformed())
        headers: dict[str, str] = {}
        for header in raw.decode("latin-1").split("\r\n") if raw else []:
            name, sep, value = header.partition(":")
            if not sep:
                raise malformed()
            headers[name.strip().lower()] = value.strip()
        return headers

    async def fields(self) -> tuple[list[tuple[str, str]], FilePart]:
        """The fields before the file, in order (names as sent, values as UTF-8 text), and
        the file part's name and type. Raises when there is no file."""
        too_large = errors.S3Error(
            "MaxPostPreDataLengthExceeded",
            400,
            "Your POST request fields preceding the upload file were too large.",
        )
        await self._until(self._delimiter, MAX_FIELDS_BYTES, malformed())  # the preamble
        fields: list[tuple[str, str]] = []
        budget = MAX_FIELDS_BYTES
        while True:
            headers = await self._next_part()
            if headers is None:
                raise errors.invalid_argument(
                    "POST requires exactly one file upload per request.", "file", "0"
                )
            params = header_params(";" + headers.get("content-disposition", ""))
            name = params.get("name")
            if name is None:
                raise malformed("A part has no name.")
            name = name.encode("latin-1").decode("utf-8", "replace")
            if name.lower() == "file":
                filename = params.get("filename")
                if filename is not None:
                    filename = filename.encode("latin-1").decode("utf-8", "replace")
                return fields, FilePart(filename, headers.get("content-type"))
            value = await self._until(self._delimiter, budget, too_large)
            budget -= len(value) + len(name)
            if budget < 0:
                raise too_large
            fields.append((name, value.decode("utf-8", "replace")))

    async def file_data(self) -> AsyncIterator[bytes]:
        """The file's bytes, as they arrive."""
        keep = len(self._delimiter) - 1
        while True:
            at = self._buffer.find(self._delimiter)
            if at >= 0:
                if at:
                    yield bytes(self._buffer[:at])
                del self._buffer[: at + len(self._delimiter)]
                return
            if len(self._buffer) > keep:
                yield bytes(self._buffer[:-keep])
                del self._buffer[:-keep]
            await self._more()
