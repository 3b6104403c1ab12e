"""Requests made in memory for a gateway's handler (no socket), streamed answer bodies and
a clock the test moves: how the metering of requests is tested."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from store.gateways.web.server import BodyReader, Request


class FakeClock:
    """A clock that stands still until the test moves ``now``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(
    method: str,
    target: str = "/pool/x",
    headers: list[tuple[str, str]] | None = None,
    received: int = 0,
) -> Request:
    """A request whose handler has read `received` bytes of its body."""
    body = BodyReader(None, received or None)
    body.bytes_read = received  # as if the handler had read that much
    return Request(method, target, headers or [], "1.1", "http", ("127.0.0.1", 1), body)


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    """An answer body streamed in these parts, one scheduling point before each."""
    for part in parts:
        await trio.lowlevel.checkpoint()
        yield part
