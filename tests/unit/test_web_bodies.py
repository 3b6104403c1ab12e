"""The HTTP/1.1 server's request bodies — framing, streaming, limits, 100-continue,
draining, and a client that stops sending — over real loopback sockets, checked on the
wire (tests.unit.web_support)."""

from __future__ import annotations

import hashlib
import random

import trio

from store.gateways.web.server import ClientDisconnected, Request, Response
from tests.unit.web_support import RawClient, echo, get, running


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
