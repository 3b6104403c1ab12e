"""What the web server's tests share: the server run in-process on a free loopback port,
and a byte-level client that sends hand-made requests and parses the answers by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from store.gateways.web.server import Handler, Request, Response, serve


@asynccontextmanager
async def running(handler: Handler, **kwargs: Any) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve(handler, "127.0.0.1", 0, task_status=task_status, **kwargs)
        )
        try:
            yield port
        finally:
            nursery.cancel_scope.cancel()


class RawClient:
    """A byte-level HTTP client: sends what it is told, parses responses by hand."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    @asynccontextmanager
    async def open(cls, port: int) -> AsyncIterator[RawClient]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            yield cls(stream)
        finally:
            await stream.aclose()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not await self._fill():
                raise EOFError(f"closed before {marker!r}; got {bytes(self.buffer)!r}")
        index = self.buffer.index(marker) + len(marker)
        out = bytes(self.buffer[:index])
        del self.buffer[:index]
        return out

    async def read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self._fill():
                raise EOFError(f"closed after {len(self.buffer)} of {n} bytes")
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out

    async def read_head(self) -> tuple[int, dict[str, str]]:
        head = (await self.read_until(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = head.split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def response(self, *, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        status, headers = await self.read_head()
        if head_request or status in (204, 304):
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, await self.read_exact(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            chunks = bytearray()
            while True:
                size = int((await self.read_until(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await self.read_until(b"\r\n")
                    return status, headers, bytes(chunks)
                chunks += await self.read_exact(size)
                await self.read_exact(2)
        while await self._fill():
            pass
        rest = bytes(self.buffer)
        self.buffer.clear()
        return status, headers, rest

    async def closed(self) -> bool:
        """True when the server closed the connection (EOF or reset) without more bytes."""
        with trio.fail_after(5):
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return True
        return data == b"" and not self.buffer


def get(target: str = "/", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


async def echo(request: Request) -> Response:
    body = await request.body.read_all(1 << 20)
    summary = (
        f"{request.method} {request.target} path={request.path} query={request.query} "
        f"v={request.http_version} scheme={request.scheme} peer={request.peer[0]} "
        f"x={request.header('X-Thing')} len={len(body)}"
    )
    return Response(200, [("Content-Type", "text/plain")], summary.encode())
