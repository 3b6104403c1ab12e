"""TlsStream over socket pairs: handshake, bulk reads, EOF, faults."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
import trio

from store import tls
from store.tlsstream import RECEIVE_SIZE, TlsStream

RECORD = 16 * 1024  # TLS plaintext record size


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cluster") / "tls"
    tls.init_ca(directory)
    tls.issue(directory, "osd.1", role="osd")
    tls.issue(directory, "osd.2", role="osd")
    return directory


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("other") / "tls"
    tls.init_ca(directory)
    tls.issue(directory, "osd.2", role="osd")
    return directory


def contexts(server_dir: Path, client_dir: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = tls.server_context(
        server_dir / "osd.1.crt", server_dir / "osd.1.key", server_dir / "ca.crt", "required"
    )
    server.num_tickets = 0
    client = tls.client_context(
        server_dir / "ca.crt", client_dir / "osd.2.crt", client_dir / "osd.2.key", False
    )
    return server, client


def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = trio.socket.socketpair()
    return trio.SocketStream(left), trio.SocketStream(right)


async def connected(certs: Path) -> tuple[TlsStream, TlsStream]:
    server_ctx, client_ctx = contexts(certs, certs)
    left, right = socket_pair()
    server = TlsStream(left, server_ctx, server_side=True)
    client = TlsStream(right, client_ctx, server_side=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.do_handshake)
        nursery.start_soon(client.do_handshake)
    return server, client


async def test_handshake_verifies_both_sides(certs: Path) -> None:
    server, client = await connected(certs)
    identity = tls.peer_identity(server.ssl_object)
    assert identity is not None and identity.name == "osd.2" and identity.role == "osd"
    assert tls.peer_identity(client.ssl_object) is not None
    assert client.getpeercert() == client.ssl_object.getpeercert()


async def test_bulk_data_arrives_whole_in_few_reads(certs: Path) -> None:
    server, client = await connected(certs)
    payload = os.urandom(4 * 1024 * 1024)
    received = bytearray()
    reads = 0

    async def receive() -> None:
        nonlocal reads
        while len(received) < len(payload):
            chunk = await server.receive_some(1024 * 1024)
            assert 0 < len(chunk) <= 1024 * 1024
            received.extend(chunk)
            reads += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await client.send_all(payload)
    assert bytes(received) == payload
    # 256 records; a read decrypts every record waiting, not one record.
    assert len(payload) // RECORD == 256
    assert reads < len(payload) // RECORD


async def test_receive_into_decrypts_into_the_callers_buffer(certs: Path) -> None:
    server, client = await connected(certs)
    payload = os.urandom(3 * RECEIVE_SIZE + 123)
    buffer = bytearray(len(payload))

    async def receive() -> None:
        got = 0
        with memoryview(buffer) as view:
            while got < len(payload):
                n = await server.receive_into(view[got:])
                assert n > 0
                got += n

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        await client.send_all(payload)
    assert buffer == payload
    await client.aclose()
    with memoryview(bytearray(10)) as view:
        assert await server.receive_into(view) == 0  # the end of the stream


async def test_max_bytes_is_respected(certs: Path) -> None:
    server, client = await connected(certs)
    await client.send_all(b"abcdefghij")
    assert await server.receive_some(3) == b"abc"
    assert await server.receive_some(100) == b"defghij"
    with pytest.raises(ValueError):
        await server.receive_some(0)


async def test_concurrent_reader_and_writer_on_each_side(certs: Path) -> None:
    server, client = await connected(certs)
    blocks = [os.urandom(100_000 + 37 * i) for i in range(20)]
    expected = b"".join(blocks)

    async def echo() -> None:
        got = 0
        while got < len(expected):
            chunk = await server.receive_some()
            got += len(chunk)
            await server.send_all(chunk)

    async def write() -> None:
        for block in blocks:
            await client.send_all(block)

    echoed = bytearray()

    async def read() -> None:
        while len(echoed) < len(expected):
            echoed.extend(await client.receive_some())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        nursery.start_soon(write)
        nursery.start_soon(read)
    assert bytes(echoed) == expected


async def test_close_notify_reads_as_end_of_stream(certs: Path) -> None:
    server, client = await connected(certs)
    await client.send_all(b"last words")
    await client.aclose()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
    assert await server.receive_some() == b""


async def test_socket_closed_without_close_notify_is_end_of_stream(certs: Path) -> None:
    server, client = await connected(certs)
    await client.send_all(b"data")
    trio.lowlevel.notify_closing(client.ssl_object)
    client.ssl_object.close()  # the socket goes, with no close_notify
    assert await server.receive_some() == b"data"
    assert await server.receive_some() == b""


async def test_closed_stream_refuses_use(certs: Path) -> None:
    server, client = await connected(certs)
    await client.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"x")
    with pytest.raises(trio.BrokenResourceError):
        await client.receive_some()
    assert server.ssl_object is not None


async def test_certificate_from_another_ca_is_refused(certs: Path, stranger: Path) -> None:
    server_ctx, client_ctx = contexts(certs, stranger)
    left, right = socket_pair()
    server = TlsStream(left, server_ctx, server_side=True)
    client = TlsStream(right, client_ctx, server_side=False)
    outcomes: dict[str, BaseException | None] = {}

    async def shake(name: str, stream: TlsStream) -> None:
        try:
            await stream.do_handshake()
            # TLS 1.3: the client learns of the refusal on its first read.
            if name == "client":
                await stream.receive_some()
        except trio.BrokenResourceError as exc:
            outcomes[name] = exc
            await stream.aclose()
        else:
            outcomes[name] = None

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(shake, "server", server)
            nursery.start_soon(shake, "client", client)
    assert isinstance(outcomes["server"], trio.BrokenResourceError)
    assert "certificate" in str(outcomes["server"])
    assert isinstance(outcomes["client"], trio.BrokenResourceError)


async def test_tampered_record_breaks_the_stream(certs: Path) -> None:
    # The two ends talk through a relay that flips one bit of the first record sent after
    # the handshake.
    server_ctx, client_ctx = contexts(certs, certs)
    client_end, relay_left = socket_pair()
    relay_right, server_end = socket_pair()
    server = TlsStream(server_end, server_ctx, server_side=True)
    client = TlsStream(client_end, client_ctx, server_side=False)
    tamper = False

    async def pipe(source: trio.SocketStream, sink: trio.SocketStream, flip: bool) -> None:
        while data := await source.receive_some(65536):
            if flip and tamper:
                record = bytearray(data)
                record[-1] ^= 0x01  # in the record's authentication tag
                data = bytes(record)
            await sink.send_all(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, relay_left, relay_right, True)
        nursery.start_soon(pipe, relay_right, relay_left, False)
        async with trio.open_nursery() as shaking:
            shaking.start_soon(server.do_handshake)
            shaking.start_soon(client.do_handshake)
        tamper = True
        await client.send_all(b"important payload")
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()
        nursery.cancel_scope.cancel()


async def test_large_writes_both_ways_while_the_socket_is_full(certs: Path) -> None:
    # Neither side reads until both have written more than the socket pair buffers: every
    # send must wait for writability and pick up where it stopped.
    server, client = await connected(certs)
    one, other = os.urandom(8 * 1024 * 1024), os.urandom(8 * 1024 * 1024)
    got: dict[str, bytes] = {}

    async def side(name: str, stream: TlsStream, payload: bytes, size: int) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send_all, payload)
            await trio.sleep(0.05)
            received = bytearray()
            while len(received) < size:
                received.extend(await stream.receive_some())
            got[name] = bytes(received)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, "server", server, one, len(other))
            nursery.start_soon(side, "client", client, other, len(one))
    assert got["server"] == other and got["client"] == one


async def test_an_operation_that_needs_the_other_direction_is_retried(certs: Path) -> None:
    # OpenSSL may, rarely, need to write while reading (or read while writing); the task
    # retries after a pause instead of waiting on the other task's direction.
    server, client = await connected(certs)
    read, write = server.ssl_object.read, client.ssl_object.write
    faults = {"read": 1, "write": 1}

    def read_once_blocked(*args: object) -> object:
        if faults["read"]:
            faults["read"] -= 1
            raise ssl.SSLWantWriteError()
        return read(*args)  # type: ignore[arg-type]

    def write_once_blocked(data: object) -> int:
        if faults["write"]:
            faults["write"] -= 1
            raise ssl.SSLWantReadError()
        return write(data)  # type: ignore[arg-type]

    server.ssl_object.read = read_once_blocked  # type: ignore[method-assign,assignment]
    client.ssl_object.write = write_once_blocked  # type: ignore[method-assign]
    with trio.fail_after(5):
        await client.send_all(b"through both")
        assert await server.receive_some() == b"through both"
    assert faults == {"read": 0, "write": 0}
