"""TLS over a trio stream, tuned for bulk replication traffic.

Theory of operation
-------------------
``trio.SSLStream`` is general: any number of tasks may read, write and renegotiate at
once, and each ``receive_some`` hands back what one call of ``SSLObject.read`` gives,
which is at most one TLS record (16 KiB). A daemon replicating 4 MiB writes then spends
a large share of its CPU going round that machinery 256 times per write.

Our links are simpler. The handshake completes before anything else happens, then one
task reads and one task writes (``store.rpc.RpcConnection``). So this stream:

- reads from the socket in large gulps and decrypts *every* complete record waiting into
  one reused buffer, returning up to ``max_bytes`` of plaintext per call (``SSLObject.read``
  without a buffer allocates as many bytes as it is asked for, per record); or, with
  ``receive_into``, straight into the caller's buffer (where a large frame goes whole);
- encrypts a ``send_all`` in slices of ``SEND_SLICE`` bytes, each sent as soon as it is
  encrypted: the TLS object's output buffer stays small instead of being grown (and copied)
  record by record to the size of a 4 MiB frame;
- serialises everything it puts on the socket behind one FIFO lock, so bytes the
  reader's ``SSLObject`` produces (TLS 1.3 key updates) go out in the order they were
  produced relative to the writer's records.

No ``await`` separates touching the ``SSLObject`` from taking the bytes it produced, so
the two tasks never interleave halfway through a TLS operation.

Server contexts should have ``num_tickets = 0``: peers never resume sessions, and a
ticket sent right after the handshake is just bytes for the client to skip.
"""

from __future__ import annotations

import ssl
from typing import Any, cast

import trio

RECEIVE_SIZE = 256 * 1024  # bytes read from the socket per call
SEND_SLICE = 256 * 1024  # plaintext bytes encrypted and sent at a time


class TlsStream(trio.abc.Stream):
    """A TLS stream for one reader task and one writer task (see the module's notes)."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        self.transport_stream = transport
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._send_lock = trio.StrictFIFOLock()
        self._plain = bytearray(RECEIVE_SIZE)  # where records are decrypted to
        self._handshake_lock = trio.Lock()
        self._handshook = False
        self._eof = False
        self._broken = False

    # --- handshake -------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Complete the handshake (idempotent). Raises BrokenResourceError on failure."""
        async with self._handshake_lock:
            if not self._handshook:
                await self._handshake()

    async def _handshake(self) -> None:
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
                continue
            except (ssl.SSLError, ssl.CertificateError) as exc:
                self._broken = True
                # Tell the peer why (an alert), as far as the socket still takes it.
                try:
                    await self._flush()
                except trio.BrokenResourceError:
                    pass
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
            break
        await self._flush()
        self._handshook = True

    def getpeercert(self, binary_form: bool = False) -> Any:
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
            got = self._decrypt_into(buffer)
            if self._outgoing.pending:
                # What reading produced (an alert, a key update) is owed to the peer; if
                # the peer is gone, the writer will find out. What was read still counts.
                try:
                    await self._flush()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if got or self._eof:
                if not got:
                    await trio.lowlevel.checkpoint()
                return got
            await self._fill()

    def _decrypt_into(self, buffer: memoryview) -> int:
        limit = len(buffer)
        got = 0
        while got < limit:
            try:
                # With a buffer, read() answers how many bytes it put there.
                n = cast(int, self.ssl_object.read(limit - got, buffer[got:]))
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._eof = True  # the peer's close_notify
                break
            except ssl.SSLError as exc:
                if self._incoming.eof:
                    self._eof = True  # the socket ended without close_notify
                    break
                self._broken = True
                raise trio.BrokenResourceError(f"TLS stream failed: {exc}") from exc
            if not n:
                self._eof = True
                break
            got += n
        return got

    async def _fill(self) -> None:
        """Wait for bytes from the socket and feed them to the TLS object."""
        data = await self.transport_stream.receive_some(RECEIVE_SIZE)
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    # --- writing -----------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._usable()
        if not data:
            await trio.lowlevel.checkpoint()
            return
        with memoryview(data) as whole, whole.cast("B") as octets:
            for at in range(0, len(octets), SEND_SLICE):
                try:
                    self.ssl_object.write(octets[at : at + SEND_SLICE])
                except ssl.SSLError as exc:
                    self._broken = True
                    raise trio.BrokenResourceError(f"TLS stream failed: {exc}") from exc
                await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def _flush(self) -> None:
        # Taking the bytes and joining the lock's queue happen without a yield between
        # them, and the lock is FIFO: bytes reach the socket in the order they were made.
        to_send = self._outgoing.read()
        if not to_send:
            return
        try:
            async with self._send_lock:
                await self.transport_stream.send_all(to_send)
        except BaseException:
            self._broken = True  # an unknown part of a record went out, or none of it
            raise

    # --- closing -----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Send close_notify if we can, then close the socket."""
        try:
            if self._handshook and not self._broken:
                with trio.move_on_after(1):
                    try:
                        self.ssl_object.unwrap()
                    except (ssl.SSLWantReadError, ssl.SSLError):
                        pass
                    await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._broken = True
            await self.transport_stream.aclose()

    async def _usable(self) -> None:
        if self._broken:
            raise trio.BrokenResourceError("TLS stream is broken or closed")
        if not self._handshook:
            await self.do_handshake()
