"""The HTTP/1.1 server plumbing, driven over real loopback sockets by raw clients.

Every test starts the server in-process on 127.0.0.1 with port 0, speaks bytes at it
(hand-made requests, broken ones included) and parses the answers by hand, so what is
checked is what goes over the wire.
"""

from __future__ import annotations

import hashlib
import random
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from store import tls
from store.gateways.web.server import (
    ClientDisconnected,
    Handler,
    Request,
    Response,
    serve,
)


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


# --- requests and keep-alive --------------------------------------------------------------


async def test_request_fields_and_keep_alive() -> None:
    async with running(echo) as port, RawClient.open(port) as client:
        await client.send(get("/a%20b/c?x=1&y=%2F", "X-THING: One\r\nx-thing: two\r\n"))
        status, headers, body = await client.response()
        assert status == 200
        assert body == (
            b"GET /a%20b/c?x=1&y=%2F path=/a%20b/c query=x=1&y=%2F v=1.1 scheme=http "
            b"peer=127.0.0.1 x=One len=0"
        )
        assert headers["server"] == "store" and headers["date"].endswith("GMT")
        await client.send(get("/second"))
        status, _, body = await client.response()
        assert status == 200 and body.startswith(b"GET /second path=/second query= ")


async def test_http10_request_is_answered_then_closed() -> None:
    async with running(echo) as port, RawClient.open(port) as client:
        await client.send(b"GET /old HTTP/1.0\r\n\r\n")
        status, _, body = await client.response()
        assert status == 200 and b"v=1.0" in body
        assert await client.closed()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async def slow_first(request: Request) -> Response:
        if request.path == "/1":
            await trio.sleep(0.05)
        return Response(200, [], request.path.encode())

    async with running(slow_first) as port, RawClient.open(port) as client:
        await client.send(
            get("/1")
            + get("/2")
            + b"PUT /3 HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
            + get("/4")
        )
        assert [(await client.response())[2] for _ in range(4)] == [b"/1", b"/2", b"/3", b"/4"]


async def test_connection_close_request_is_honoured() -> None:
    async with running(echo) as port, RawClient.open(port) as client:
        await client.send(get("/", "Connection: close\r\n"))
        status, headers, _ = await client.response()
        assert status == 200 and headers.get("connection") == "close"
        assert await client.closed()


# --- request bodies -----------------------------------------------------------------------


async def test_chunked_request_body_is_reassembled() -> None:
    sizes: list[int] = []

    async def handler(request: Request) -> Response:
        if request.method == "GET":
            return Response(200)
        assert request.body.length is None and not request.body.consumed
        digest = hashlib.sha256()
        while chunk := await request.body.read(5):
            sizes.append(len(chunk))
            digest.update(chunk)
        assert request.body.consumed
        return Response(200, [], digest.hexdigest().encode())

    async with running(handler) as port, RawClient.open(port) as client:
        await client.send(
            b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\nc;ext=1\r\ndefghijklmno\r\n0\r\nTrailer: x\r\n\r\n"
        )
        _, _, body = await client.response()
        assert body == hashlib.sha256(b"abcdefghijklmno").hexdigest().encode()
        assert max(sizes) <= 5
        await client.send(get())  # still usable
        assert (await client.response())[0] == 200


async def test_body_iteration_and_length() -> None:
    async def handler(request: Request) -> Response:
        assert request.body.length == 11
        data = b"".join([chunk async for chunk in request.body])
        return Response(200, [], data[::-1])

    async with running(handler) as port, RawClient.open(port) as client:
        await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world")
        assert (await client.response())[2] == b"dlrow olleh"


async def test_large_body_read_in_smaller_pieces_is_whole() -> None:
    body = random.randbytes(3 * 1024 * 1024 + 5)
    sizes: list[int] = []

    async def handler(request: Request) -> Response:
        digest = hashlib.sha256()
        while chunk := await request.body.read(100_000):
            sizes.append(len(chunk))
            digest.update(chunk)
        return Response(200, [], digest.hexdigest().encode())

    async with running(handler) as port, RawClient.open(port) as client:
        head = f"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
        await client.send(head.encode() + body)
        assert (await client.response())[2] == hashlib.sha256(body).hexdigest().encode()
        assert sum(sizes) == len(body) and max(sizes) <= 100_000


async def test_body_without_framing_is_empty_and_consumed() -> None:
    async def handler(request: Request) -> Response:
        assert request.body.consumed and request.body.length is None
        assert await request.body.read() == b""
        return Response(204)

    async with running(handler) as port, RawClient.open(port) as client:
        await client.send(get())
        status, headers, _ = await client.response()
        assert status == 204 and "content-length" not in headers


async def test_read_all_over_limit_is_413_without_reading() -> None:
    async def handler(request: Request) -> Response:
        await request.body.read_all(10)
        return Response(200)

    async with running(handler) as port, RawClient.open(port) as client:
        await client.send(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 1000
        )
        status, headers, body = await client.response()
        assert status == 413 and b"larger than 10 bytes" in body
        assert headers["connection"] == "close"
    async with running(handler) as port, RawClient.open(port) as client:  # chunked: found late
        await client.send(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n"
        )
        assert (await client.response())[0] == 413


async def test_expect_100_continue_is_sent_at_first_read() -> None:
    async with running(echo) as port, RawClient.open(port) as client:
        await client.send(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        # Exactly this line: botocore (the AWS CLI) sends no body after a bare "HTTP/1.1 100".
        assert await client.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(b"data")
        status, _, body = await client.response()
        assert status == 200 and body.endswith(b"len=4")


async def test_no_100_continue_when_handler_answers_without_reading() -> None:
    async def refuse(request: Request) -> Response:
        return Response(401, [], b"no")

    async with running(refuse) as port, RawClient.open(port) as client:
        await client.send(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
        )
        status, headers, body = await client.response()
        assert (status, body) == (401, b"no")
        assert headers["connection"] == "close"  # the body never came: nothing to drain
        assert await client.closed()


async def test_unread_small_body_is_drained_and_connection_kept() -> None:
    async def ignore(request: Request) -> Response:
        return Response(200, [], b"ok")

    async with running(ignore) as port, RawClient.open(port) as client:
        await client.send(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"y" * 100000
        )
        assert (await client.response())[2] == b"ok"
        await client.send(get())
        assert (await client.response())[2] == b"ok"
        await client.send(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n" + b"y" * 1000
        )
        status, headers, _ = await client.response()
        assert status == 200 and headers["connection"] == "close"


async def test_client_disconnect_mid_body_reaches_the_handler() -> None:
    seen: list[BaseException] = []
    done = trio.Event()

    async def handler(request: Request) -> Response:
        try:
            await request.body.read_all(1 << 20)
        except ClientDisconnected as exc:
            seen.append(exc)
            raise
        finally:
            done.set()
        return Response(200)

    async with running(handler) as port:
        async with RawClient.open(port) as client:
            await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\npartial")
        with trio.fail_after(5):
            await done.wait()
        assert len(seen) == 1
        async with RawClient.open(port) as client:  # the server lives on
            await client.send(get())
            assert (await client.response())[0] == 200


async def test_silent_client_mid_body_times_out_as_disconnect() -> None:
    seen: list[BaseException] = []

    async def handler(request: Request) -> Response:
        try:
            await request.body.read_all(1 << 20)
        except ClientDisconnected as exc:
            seen.append(exc)
            raise
        return Response(200)

    async with running(handler, idle_timeout=0.2) as port, RawClient.open(port) as client:
        await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        assert await client.closed()
        assert len(seen) == 1


async def test_body_errors_inside_exception_groups_keep_their_meaning() -> None:
    async def handler(request: Request) -> Response:
        async with trio.open_nursery() as nursery:  # wraps what the body raises in a group
            nursery.start_soon(trio.sleep, 0)
            await request.body.read_all(10)
        return Response(200)

    async with running(handler) as port, RawClient.open(port) as client:
        await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n" + b"x" * 50)
        status, _, body = await client.response()
        assert status == 413 and b"larger than 10 bytes" in body


# --- hostile input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02\xff\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: -3\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHo st: t\r\n\r\n",
        b"GET  HTTP/9\r\n\r\n",
    ],
)
async def test_malformed_request_gets_400_and_close(garbage: bytes) -> None:
    async with running(echo) as port:
        async with RawClient.open(port) as client:
            await client.send(garbage)
            status, headers, body = await client.response()
            assert status in (400, 501) and headers["connection"] == "close"
            assert body.startswith(f"{status} ".encode())
            assert await client.closed()
        async with RawClient.open(port) as client:
            await client.send(get())
            assert (await client.response())[0] == 200


async def test_mangled_requests_never_take_the_server_down() -> None:
    rng = random.Random(5)
    valid = (
        b"PUT /a?b=c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + get("/next")
    )
    async with running(echo, idle_timeout=0.5) as port:
        for _ in range(150):
            mangled = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                at = rng.randrange(len(mangled))
                match rng.randrange(3):
                    case 0:
                        mangled[at] = rng.randrange(256)
                    case 1:
                        del mangled[at]
                    case _:
                        mangled.insert(at, rng.choice(b"\r\n:; -0\x00\xff"))
            async with RawClient.open(port) as client:
                await client.send(bytes(mangled))
                await client.stream.send_eof()  # type: ignore[attr-defined]
                with trio.fail_after(5):
                    try:
                        while await client._fill():
                            pass
                    except trio.BrokenResourceError:
                        pass
                assert client.buffer == b"" or client.buffer.startswith(b"HTTP/1.1 ")
        async with RawClient.open(port) as client:
            await client.send(get())
            assert (await client.response())[0] == 200


async def test_malformed_chunked_body_is_400() -> None:
    async with running(echo) as port, RawClient.open(port) as client:
        await client.send(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
        )
        status, headers, body = await client.response()
        assert status == 400 and b"malformed request body" in body
        assert headers["connection"] == "close"
        assert await client.closed()


async def test_oversized_head_is_431() -> None:
    async with running(echo, max_header_bytes=4096) as port, RawClient.open(port) as client:
        await client.send(get("/", "X-Big: " + "a" * 8000 + "\r\n"))
        status, _, _ = await client.response()
        assert status == 431
        assert await client.closed()


async def test_idle_connection_is_closed() -> None:
    async with running(echo, idle_timeout=0.2) as port, RawClient.open(port) as client:
        await client.send(b"GET / HTTP/1.1\r\n")  # a head that never ends
        assert await client.closed()


async def test_handler_exception_is_a_bare_500() -> None:
    async def broken(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("secret detail")
        return Response(200, [], b"fine")

    async with running(broken) as port, RawClient.open(port) as client:
        await client.send(get("/boom"))
        status, _, body = await client.response()
        assert status == 500 and b"secret" not in body
        await client.send(get("/ok"))
        assert (await client.response())[2] == b"fine"


async def test_invalid_response_headers_are_a_500() -> None:
    async def bad(request: Request) -> Response:
        return Response(200, [("X-Bad", "line\r\nbreak")], b"x")

    async with running(bad) as port, RawClient.open(port) as client:
        await client.send(get())
        assert (await client.response())[0] == 500


# --- responses ----------------------------------------------------------------------------


async def test_head_204_and_304_carry_no_body() -> None:
    async def handler(request: Request) -> Response:
        status = {"/204": 204, "/304": 304}.get(request.path, 200)
        headers = [("ETag", '"e"')] if status == 304 else []
        return Response(status, headers, b"twelve bytes")

    async with running(handler) as port, RawClient.open(port) as client:
        await client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = await client.response(head_request=True)
        assert status == 200 and headers["content-length"] == "12"
        await client.send(get("/204"))
        status, headers, _ = await client.response()
        assert status == 204 and "content-length" not in headers
        await client.send(get("/304"))
        status, headers, _ = await client.response()
        assert status == 304 and headers["etag"] == '"e"'
        await client.send(get("/"))  # nothing stray was left on the wire
        assert (await client.response())[2] == b"twelve bytes"


async def pieces(n: int, size: int = 65536) -> AsyncIterator[bytes]:
    block = b"z" * size
    for _ in range(n):
        yield block


async def test_iterable_body_is_chunked_or_streamed_with_its_length() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/sized":
            return Response(200, [("Content-Length", str(3 * 1000))], pieces(3, 1000))
        return Response(200, [], pieces(3, 1000))

    async with running(handler) as port, RawClient.open(port) as client:
        await client.send(get("/chunked"))
        _, headers, body = await client.response()
        assert headers["transfer-encoding"] == "chunked" and body == b"z" * 3000
        await client.send(get("/sized"))
        _, headers, body = await client.response()
        assert headers["content-length"] == "3000" and body == b"z" * 3000


async def test_failing_body_closes_the_connection_mid_response() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"a" * 100
        raise RuntimeError("storage went away")

    async def handler(request: Request) -> Response:
        return Response(200, [("Content-Length", "1000")], failing())

    async with running(handler) as port, RawClient.open(port) as client:
        await client.send(get())
        status, headers = await client.read_head()
        assert status == 200 and headers["content-length"] == "1000"
        with pytest.raises(EOFError):
            await client.read_exact(1000)


async def test_large_bodies_stream_in_bounded_memory() -> None:
    size = 32 * 1024 * 1024
    block = bytes(range(256)) * 256  # 64 KiB

    async def handler(request: Request) -> Response:
        if request.method == "PUT":
            digest = hashlib.sha256()
            async for chunk in request.body:
                digest.update(chunk)
            return Response(200, [], digest.hexdigest().encode())
        return Response(200, [("Content-Length", str(size))], pieces(size // 65536))

    async with running(handler) as port, RawClient.open(port) as client:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            await client.send(
                f"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode()
            )
            expected = hashlib.sha256()
            for _ in range(size // len(block)):
                await client.send(block)
                expected.update(block)
            status, _, body = await client.response()
            assert (status, body) == (200, expected.hexdigest().encode())
            await client.send(get("/big"))
            status, headers = await client.read_head()
            assert int(headers["content-length"]) == size
            received = 0
            while received < size:
                chunk = await client.read_exact(min(65536, size - received))
                received += len(chunk)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert received == size
        assert peak < 8 * 1024 * 1024, f"peak {peak} bytes for a {size}-byte body"


# --- TLS ----------------------------------------------------------------------------------


async def test_https(tmp_path: Path) -> None:
    tls.init_ca(tmp_path)
    cert, key = tls.issue(tmp_path, "localhost", ["127.0.0.1"], role="osd")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    async with running(echo, ssl_context=server_ctx) as port:
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=client_ctx)
        try:
            client = RawClient(stream)
            await client.send(get("/secure"))
            status, _, body = await client.response()
            assert status == 200 and b"scheme=https" in body
        finally:
            await stream.aclose()
        async with RawClient.open(port) as plain:  # plain HTTP on a TLS port: just closed
            await plain.send(get())
            assert await plain.closed()
