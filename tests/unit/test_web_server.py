"""The HTTP/1.1 server plumbing, driven over real loopback sockets by raw clients.

Every test starts the server in-process on 127.0.0.1 with port 0, speaks bytes at it
(hand-made requests, broken ones included) and parses the answers by hand, so what is
checked is what goes over the wire (tests.unit.web_support). Request bodies are in
tests/unit/test_web_bodies.py.
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from store import tls
from store.gateways.web import server as web_server
from store.gateways.web.server import Request, Response, send_in_bulk
from tests.unit.web_support import RawClient, echo, get, running

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


async def test_connections_send_in_bulk(monkeypatch: pytest.MonkeyPatch) -> None:
    # trio holds unsent bytes to 16 KiB per socket; a response body need not be held so.
    option = (socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
    accepted: list[tuple[int, trio.SocketStream]] = []

    def spy(stream: trio.SocketStream) -> None:
        before = stream.getsockopt(*option)
        send_in_bulk(stream)
        accepted.append((before, stream))

    monkeypatch.setattr(web_server, "send_in_bulk", spy)
    body = random.randbytes(8 * 1024 * 1024)

    async def big(request: Request) -> Response:
        # What the connection serving this request is set to, while it serves it.
        lowat = accepted[-1][1].getsockopt(*option)
        return Response(200, [("X-Lowat", str(lowat))], body)

    async with running(big) as port, RawClient.open(port) as client:
        await client.send(get("/big"))
        status, headers, received = await client.response()
    assert [before for before, _ in accepted] == [16 * 1024]  # trio's, undone once
    assert status == 200 and headers["x-lowat"] == "0"  # the system's (unlimited here)
    assert received == body
