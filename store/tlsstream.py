"""TLS on a TCP socket driven by trio, tuned for bulk replication traffic.

Theory of operation
-------------------
``trio.SSLStream`` is general: it runs TLS over any stream through memory buffers, and any
number of tasks may read, write and renegotiate at once. Every byte then crosses two
extra copies (socket to buffer to TLS, TLS to buffer to socket), each ``receive_some``
hands back at most one TLS record (16 KiB), and each record costs a round of Python. A
daemon replicating 4 MiB writes spent a large share of its CPU on that.

Our links are simpler: a connected TCP socket, a handshake that completes before anything
else happens, then one task that reads and one that writes (``store.rpc.RpcConnection``).
So this stream hands the socket itself to OpenSSL (a non-blocking ``ssl.SSLSocket``): TLS
reads records from the socket and writes them to it with no copy through Python, and trio
only waits for the socket to be readable or writable when OpenSSL says it must.

- ``receive_into`` decrypts *every* record waiting straight into the caller's buffer (where
  ``store.rpc`` receives a large frame whole), and ``receive_some`` into one reused buffer;
- ``send_all`` encrypts in slices of ``SEND_SLICE`` bytes; OpenSSL sends each record as it
  is made.

OpenSSL may, rarely, need the other direction in the middle of an operation (a TLS 1.3
key update answered while reading). The reader waits for readability and the writer for
writability, and trio lets one task wait for each; a task that needs the other direction
retries after a short sleep instead (``CROSS_WAIT``), while the task that owns that
direction moves things on.

Server contexts should have ``num_tickets = 0``: peers never resume sessions, and a
ticket sent right after the handshake is just bytes for the client to skip.
"""

from __future__ import annotations

import socket
import ssl
from typing import cast

import trio

RECEIVE_SIZE = 256 * 1024  # largest plaintext answered by receive_some by default
SEND_SLICE = 256 * 1024  # plaintext bytes handed to OpenSSL at a time
CROSS_WAIT = 0.001  # seconds between retries of an operation that needs the other direction


class TlsStream(trio.abc.Stream):
    """TLS over a connected ``trio.SocketStream``, which it takes over (see the module)."""

    def __init__(
        self,
        transport: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        # The descriptor leaves trio's socket object (closing that is then a no-op) for a
        # plain socket that OpenSSL reads and writes itself.
        raw = socket.socket(fileno=transport.socket.detach())
        raw.setblocking(False)
        self.ssl_object = context.wrap_socket(
            raw,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=False,
        )
        self._plain = bytearray(RECEIVE_SIZE)  # where receive_some decrypts to
        self._handshake_lock = trio.Lock()
        self._handshook = False
        self._eof = False
        self._broken = False
        self._closed = False

    # --- handshake -------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Complete the handshake (idempotent). Raises BrokenResourceError on failure."""
        async with self._handshake_lock:
            if not self._handshook:
                await self._handshake()

    async def _handshake(self) -> None:
        if self._broken:
            raise trio.BrokenResourceError("TLS stream is broken or closed")
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                await self._wait_readable()
                continue
            except ssl.SSLWantWriteError:
                await self._wait_writable()
                continue
            except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
                # OpenSSL has sent the peer its alert already, where the socket took it.
                self._broken = True
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            break
        self._handshook = True

    def getpeercert(self, binary_form: bool = False) -> object:
        return self.ssl_object.getpeercert(binary_form)

    # --- reading -----------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to ``max_bytes`` of plaintext: everything decryptable now, else wait for some.
        Returns b"" at the end of the stream."""
        limit = RECEIVE_SIZE if max_bytes is None else max_bytes
        if limit < 1:
            raise ValueError("max_bytes must be >= 1")
        if len(self._plain) < limit:
            self._plain = bytearray(limit)
        with memoryview(self._plain) as plain:
            got = await self.receive_into(plain[:limit])
            return bytes(plain[:got])

    async def receive_into(self, buffer: memoryview) -> int:
        """``receive_some`` that decrypts into ``buffer`` (not empty) and answers how
        many bytes it put there: 0 at the end of the stream."""
        if self._eof:
            await trio.lowlevel.checkpoint()
            return 0
        await self._usable()
        while True:
            got, wants_write = self._decrypt_into(buffer)
            if got or self._eof:
                if not got:
                    await trio.lowlevel.checkpoint()
                return got
            if wants_write:
                await self._wait_crossed()  # the writer task owns writability
            else:
                await self._wait_readable()

    def _decrypt_into(self, buffer: memoryview) -> tuple[int, bool]:
        """Decrypt what is waiting into ``buffer``: (bytes put there, whether OpenSSL
        stopped because it must write first)."""
        limit = len(buffer)
        got = 0
        tls = self.ssl_object
        while got < limit:
            try:
                # With a buffer, read() answers how many bytes it put there.
                n = cast(int, tls.read(limit - got, buffer[got:]))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:
                return got, True
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True  # close_notify, or the socket ended without one
                break
            except (ssl.SSLError, OSError) as exc:
                self._broken = True
                raise trio.BrokenResourceError(f"TLS stream failed: {exc}") from exc
            if not n:
                self._eof = True
                break
            got += n
        return got, False

    # --- writing -----------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._usable()
        if not data:
            await trio.lowlevel.checkpoint()
            return
        tls = self.ssl_object
        with memoryview(data) as whole, whole.cast("B") as octets:
            at = 0
            while at < len(octets):
                piece = octets[at : at + SEND_SLICE]
                try:
                    # Without partial writes, a write that completes took the whole piece;
                    # one that must wait is repeated with the same piece.
                    tls.write(piece)
                except ssl.SSLWantWriteError:
                    await self._wait_writable()
                    continue
                except ssl.SSLWantReadError:
                    await self._wait_crossed()  # the reader task owns readability
                    continue
                except (ssl.SSLError, OSError) as exc:
                    self._broken = True
                    raise trio.BrokenResourceError(f"TLS stream failed: {exc}") from exc
                at += len(piece)
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self._wait_writable()

    # --- waiting on the socket -----------------------------------------------------------

    async def _wait_readable(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_readable(self.ssl_object)

    async def _wait_writable(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self.ssl_object)

    async def _wait_crossed(self) -> None:
        await trio.sleep(CROSS_WAIT)
        self._check_open()  # closed meanwhile by another task

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream closed")

    # --- closing -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send close_notify if the socket takes it now, then close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        if self._handshook and not self._broken:
            try:
                self.ssl_object.unwrap()  # sends close_notify; waits for nothing back
            except (ssl.SSLError, OSError, ValueError):
                pass
        self._broken = self._closed = True
        trio.lowlevel.notify_closing(self.ssl_object)
        self.ssl_object.close()
        await trio.lowlevel.checkpoint()

    async def _usable(self) -> None:
        if self._broken:
            raise trio.BrokenResourceError("TLS stream is broken or closed")
        if not self._handshook:
            await self.do_handshake()
