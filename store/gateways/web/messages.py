"""What a handler sees and returns: requests, responses, and the errors of a request body.

Pure data, no I/O. The body of a request is read through a :class:`BodyReader`, which
lives with the connection (``connection.py``) because reading it drives the socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from store.gateways.web.connection import BodyReader

# A piece of a streamed response body: sent as it is, never copied to bytes first.
Chunk = bytes | bytearray | memoryview


class BodyError(Exception):
    """A request body could not be read to its end."""


class ClientDisconnected(BodyError):
    """The client closed the connection (or went silent past the idle timeout) mid-body."""


class MalformedBody(BodyError):
    """The body's framing is broken (bad chunk sizes, ...). The server answers 400."""


class BodyTooLarge(BodyError):
    """The body is longer than the caller accepts. The server answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


@dataclass
class Request:
    method: str
    target: str  # as sent: path + "?" + query, still percent-encoded
    headers: list[tuple[str, str]]  # names lower-cased, values latin-1 decoded, in order
    http_version: str
    scheme: str
    peer: tuple[str, int]
    body: BodyReader

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        parts = self.target.split("?", 1)
        return parts[1] if len(parts) == 2 else ""


@dataclass
class Response:
    """A response. A bytes body gets a Content-Length; an iterable body is streamed as is
    when the headers give its Content-Length, and chunked otherwise. HEAD requests and
    1xx/204/304 responses never carry a body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | AsyncIterable[Chunk] = b""

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


Handler = Callable[[Request], Awaitable[Response]]


def text_response(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A short plain-text response (errors mostly)."""
    return Response(
        status,
        [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])],
        text.encode("utf-8"),
    )
