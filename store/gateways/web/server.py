"""The HTTP/1.1 server shared by the gateways: trio listeners, TLS, one task per connection.

``serve(handler, host, port)`` answers every request with ``await handler(request)``.
The protocol work is in ``connection.py`` (h11 driven by the socket); this module
accepts connections, wraps them in TLS when asked, and makes sure that whatever happens
on one connection ends with that connection and never with the server.
"""

from __future__ import annotations

import logging
import socket
import ssl

import trio

from store.gateways import workers as gateway_workers
from store.gateways.web.connection import BodyReader, Connection
from store.gateways.web.messages import (
    BodyError,
    BodyTooLarge,
    ClientDisconnected,
    Handler,
    MalformedBody,
    Request,
    Response,
    text_response,
)

__all__ = [
    "BodyError",
    "BodyReader",
    "BodyTooLarge",
    "ClientDisconnected",
    "Handler",
    "MalformedBody",
    "Request",
    "Response",
    "send_in_bulk",
    "serve",
    "text_response",
]

log = logging.getLogger("store.web")


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    max_header_bytes: int = 64 * 1024,
    idle_timeout: float = 60.0,
    reuse_port: bool = False,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTP/1.1 (HTTPS with `ssl_context`) on host:port until cancelled; with
    `reuse_port`, beside other processes listening there (``store.gateways.workers``).

    `task_status.started` receives the bound port (useful with port 0)."""
    if reuse_port:
        listeners = await _shared_listeners(host, port)
    else:
        listeners = await trio.open_tcp_listeners(port, host=host)
    bound = int(listeners[0].socket.getsockname()[1])
    scheme = "https" if ssl_context is not None else "http"

    async def on_connection(stream: trio.SocketStream) -> None:
        peer = _peer_of(stream.socket)
        send_in_bulk(stream)
        try:
            wrapped: trio.abc.Stream = stream
            if ssl_context is not None:
                tls = trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=True)
                with trio.move_on_after(idle_timeout) as scope:
                    await tls.do_handshake()
                if scope.cancelled_caught:
                    raise trio.BrokenResourceError("TLS handshake timed out")
                wrapped = tls
            connection = Connection(
                wrapped,
                peer=peer,
                scheme=scheme,
                max_header_bytes=max_header_bytes,
                idle_timeout=idle_timeout,
            )
            await connection.serve(handler)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("%s:%d: connection ended: %s", *peer, exc)
            await trio.aclose_forcefully(stream)
        except Exception:
            log.exception("%s:%d: connection failed", *peer)
            await trio.aclose_forcefully(stream)

    log.info("serving %s on %s:%d", scheme, host, bound)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, on_connection, listeners)
        task_status.started(bound)


async def _shared_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """Listeners on every address of `host` at `port` with SO_REUSEPORT: the kernel spreads
    connections over every socket listening there so."""
    listeners = []
    try:
        for family, address in gateway_workers.addresses(host, port):
            sock = gateway_workers.shared_socket(family, address)
            sock.listen(socket.SOMAXCONN)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
    except OSError:
        for listener in listeners:
            await listener.aclose()
        raise
    return listeners


def send_in_bulk(stream: trio.SocketStream) -> None:
    """Let the kernel queue as much of what we send as its send buffer holds.

    ``trio.SocketStream`` sets ``TCP_NOTSENT_LOWAT`` to 16 KiB, so that
    ``wait_send_all_might_not_block`` means something; then a send stops as soon as
    16 KiB wait unsent, and a 4 MiB body goes out in some thirty system calls and as many
    wake-ups of the reader instead of one or two (sending 4 MiB over loopback cost 1.9 ms of
    CPU against 1.0 without it). A response body is bulk data that nothing waits to
    replace, so connections go back to the system's setting (0 means that)."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if option is None:
        return
    try:
        stream.setsockopt(socket.IPPROTO_TCP, option, 0)
    except OSError:
        pass  # not a TCP socket after all: nothing to undo


def _peer_of(sock: trio.socket.SocketType) -> tuple[str, int]:
    try:
        address = sock.getpeername()
    except OSError:
        return ("?", 0)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return (str(address[0]), int(address[1]))
    return (str(address), 0)
