"""One HTTP/1.1 connection: h11 fed from a trio stream, requests handed to a handler.

Theory of operation. h11 owns the protocol: it is fed the bytes that arrive and hands
back events (a request head, body data, the end of a body, the peer closing), and turns
the events we send into bytes. This module only moves bytes and decides policy:

* A request's head must arrive whole within ``idle_timeout`` of the connection becoming
  idle, and within ``max_header_bytes`` (h11 refuses longer heads: 431). A head h11
  cannot parse gets a 400 and the connection is closed.
* The body is pulled by the handler through :class:`BodyReader`, so a slow handler
  slows the client (TCP flow control) and memory stays bounded by one read. A client that
  waits for ``100 Continue`` gets it at the first read and never before: a handler that
  answers without reading (401, 413, ...) spares the client the upload.
* The response is sent after the handler returns. An iterable body is sent as it is
  produced; each send must make progress within ``idle_timeout``. If the iterable fails
  after the head has gone out, nothing valid can be said any more, so the connection is
  closed and the client sees a short body.
* Then the request body, if the handler left some of it, is read and dropped (at most
  ``DRAIN_LIMIT`` bytes; more, or a client still waiting for ``100 Continue``, closes the
  connection), and the connection waits for the next request. Pipelined requests are
  already in h11's buffer and are answered in order.
* Closing is "lingering": our side is shut for writing and what the client still sends
  is read for a moment, so that a client in the middle of an upload receives our answer
  instead of a reset.

Nothing a client sends can raise out of :meth:`Connection.serve`; the server logs and
closes on anything unexpected.
"""

from __future__ import annotations

import email.utils
import http
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, cast

import h11
import trio

from store.errors import single_error
from store.gateways.web.messages import (
    BodyTooLarge,
    Chunk,
    ClientDisconnected,
    Handler,
    MalformedBody,
    Request,
    Response,
)

log = logging.getLogger("store.web")

RECEIVE_SIZE = 1024 * 1024
DRAIN_LIMIT = 1024 * 1024  # unread body bytes dropped to keep a connection, at most
LINGER_SECONDS = 2.0
SERVER_NAME = "store"


class _Close(Exception):
    """Stop serving this connection (the peer left, timed out or broke the protocol)."""


class BodyReader:
    """The request body as it arrives (Content-Length or chunked framing, via h11).

    Sends ``100 Continue`` before the first read when the client asked for it, and never
    if the handler answers without reading. ``read`` raises :class:`ClientDisconnected`
    when the client goes away (or stays silent past the idle timeout) and
    :class:`MalformedBody` on broken chunked framing.
    """

    def __init__(self, connection: Connection | None, length: int | None) -> None:
        self._connection = connection
        self.length = length
        self.consumed = connection is None
        self._pending = b""  # the piece being read, let go of once read whole
        self._offset = 0  # how much of it has been read
        self.bytes_read = 0

    async def read(self, max_bytes: int = 65536) -> bytes:
        """Up to `max_bytes` of the body (at least one unless at the end); b"" at the end."""
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        while not self._pending:
            if self.consumed:
                return b""
            assert self._connection is not None
            event = await self._connection.next_body_event()
            if isinstance(event, h11.Data):
                self._pending = bytes(event.data)
            else:
                self.consumed = True
        pending, start = self._pending, self._offset
        if start == 0 and len(pending) <= max_bytes:
            chunk = pending  # the whole piece: no copy
        else:
            chunk = pending[start : start + max_bytes]
        self._offset = start + len(chunk)
        if self._offset == len(pending):
            self._pending, self._offset = b"", 0
        self.bytes_read += len(chunk)
        return chunk

    async def read_all(self, limit: int) -> bytes:
        """The whole body; raises :class:`BodyTooLarge` (before reading, when the
        Content-Length already says so) if it is longer than `limit`."""
        if self.length is not None and self.length > limit:
            raise BodyTooLarge(limit)
        parts: list[bytes] = []
        total = 0
        while chunk := await self.read(RECEIVE_SIZE):
            total += len(chunk)
            if total > limit:
                raise BodyTooLarge(limit)
            parts.append(chunk)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read(RECEIVE_SIZE):
            yield chunk


class Connection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: tuple[str, int],
        scheme: str,
        max_header_bytes: int,
        idle_timeout: float,
    ) -> None:
        self.stream = stream
        self.peer = peer
        self.scheme = scheme
        self.idle_timeout = idle_timeout
        self.max_header_bytes = max_header_bytes
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._eof = False

    # --- receiving -----------------------------------------------------------------------

    async def _next_event(self, deadline: float) -> Any:
        """The next h11 event, reading from the socket as needed until `deadline`.

        Raises h11.RemoteProtocolError for bytes that break HTTP, _Close when the peer is
        gone or silent."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self._eof:  # h11 turns EOF into ConnectionClosed or an error; never loop
                raise _Close("connection closed")
            with trio.move_on_at(deadline):
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise _Close(f"receive failed: {exc}") from None
                self._eof = not data
                self.h11.receive_data(bytes(data))
                continue
            raise _Close("timed out waiting for the client")

    async def next_body_event(self) -> h11.Data | h11.EndOfMessage:
        """For BodyReader: the next piece of the current request's body."""
        deadline = trio.current_time() + self.idle_timeout
        try:
            if (
                self.h11.they_are_waiting_for_100_continue
                and self.h11.our_state is h11.SEND_RESPONSE
            ):
                # With its reason phrase: botocore's 100-continue handling (the AWS CLI's)
                # does not recognise a bare "HTTP/1.1 100" and then never sends the body.
                await self._send(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
            event = await self._next_event(deadline)
        except h11.RemoteProtocolError as exc:
            if self._eof:
                raise ClientDisconnected("the client closed the connection mid-body") from None
            raise MalformedBody(f"malformed request body: {exc}") from None
        except _Close as exc:
            raise ClientDisconnected(str(exc)) from None
        if isinstance(event, h11.Data | h11.EndOfMessage):
            return event
        raise ClientDisconnected(f"unexpected {type(event).__name__} in a request body")

    # --- sending -------------------------------------------------------------------------

    async def _send(self, event: Any) -> None:
        # The pieces as h11 frames them: a body chunk is passed through, not copied.
        pieces = self.h11.send_with_data_passthrough(event)
        if not pieces:
            return
        with trio.move_on_after(self.idle_timeout):
            try:
                for piece in pieces:
                    if piece:
                        await self.stream.send_all(piece)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Close(f"send failed: {exc}") from None
            return
        raise _Close("timed out sending to the client")

    # --- the request loop ----------------------------------------------------------------

    async def serve(self, handler: Handler) -> None:
        try:
            while await self._one_exchange(handler):
                self.h11.start_next_cycle()
        except _Close as exc:
            log.debug("%s:%d: %s", *self.peer, exc)
        except h11.LocalProtocolError as exc:
            # Our own response broke HTTP (a body shorter than its Content-Length...).
            log.error("%s:%d: invalid response, connection closed: %s", *self.peer, exc)
        finally:
            await self._lingering_close()

    async def _one_exchange(self, handler: Handler) -> bool:
        """Serve one request; True when the connection can carry another."""
        try:
            event = await self._next_event(trio.current_time() + self.idle_timeout)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint >= 400 else 400
            await self._send_error(status, f"malformed request: {exc}")
            return False
        if not isinstance(event, h11.Request):
            return False  # ConnectionClosed: the client is done
        # h11 bounds only heads that are still incomplete; one that arrived whole in a
        # single read is measured here.
        head_bytes = len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
        if head_bytes > self.max_header_bytes:
            await self._send_error(431, f"request head larger than {self.max_header_bytes} bytes")
            return False
        request = self._make_request(event)
        response = await self._call(handler, request)
        close = self._must_close_after(request, response)
        if close:
            response.headers = [(k, v) for k, v in response.headers if k.lower() != "connection"]
            response.headers.append(("Connection", "close"))
        await self._send_response(request, response)
        if close or self.h11.our_state is not h11.DONE:
            return False
        return await self._drain(request.body)

    def _make_request(self, event: h11.Request) -> Request:
        headers = [
            (bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in event.headers
        ]
        length = None
        for key, value in headers:
            if key == "content-length":
                length = int(value)  # h11 checked it
            elif key == "transfer-encoding":
                length = None
                break
        body = BodyReader(self, length)
        # A request without a body has its end right behind its head; taking it now makes
        # `consumed` true from the start (and no 100 Continue is ever due).
        chunked = any(k == "transfer-encoding" for k, _ in headers)
        if self.h11.their_state is h11.SEND_BODY and not length and not chunked:
            pending = self.h11.next_event()
            if isinstance(pending, h11.EndOfMessage):
                body.consumed = True
        return Request(
            method=bytes(event.method).decode("ascii"),
            target=bytes(event.target).decode("latin-1"),
            headers=headers,
            http_version=bytes(event.http_version).decode("ascii"),
            scheme=self.scheme,
            peer=self.peer,
            body=body,
        )

    async def _call(self, handler: Handler, request: Request) -> Response:
        try:
            response = await handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not a Response")
            return response
        except Exception as raised:
            # A handler that reads the body inside a nursery gets body errors wrapped in
            # exception groups; they mean the same thing unwrapped.
            exc = single_error(raised)
            if isinstance(exc, ClientDisconnected):
                raise _Close(str(exc)) from None
            if isinstance(exc, BodyTooLarge):
                return _error_response(413, str(exc), close=True)
            if isinstance(exc, MalformedBody):
                return _error_response(400, str(exc), close=True)
            log.exception("%s %s from %s:%d failed", request.method, request.target, *self.peer)
            return _error_response(500, "internal server error", close=False)

    def _must_close_after(self, request: Request, response: Response) -> bool:
        if (response.header("connection") or "").lower() == "close":
            return True
        if request.body.consumed:
            return False
        # The rest of the body will be dropped; a client that waits for 100 Continue will
        # not send it, and one announcing too much is not worth waiting for.
        if self.h11.they_are_waiting_for_100_continue:
            return True
        return request.body.length is not None and (
            request.body.length - request.body.bytes_read > DRAIN_LIMIT
        )

    async def _send_response(self, request: Request, response: Response) -> None:
        no_body = request.method == "HEAD" or response.status in (204, 304)
        body = response.body
        try:
            head = self._response_head(response, body, request.method)
        except (ValueError, TypeError, h11.LocalProtocolError) as exc:
            log.error("invalid response to %s %s: %s", request.method, request.target, exc)
            await _close_iterable(body)
            await self._send_error(500, "internal server error")
            raise _Close("invalid response from the handler") from None
        await self._send(head)
        if no_body:
            await _close_iterable(body)
        elif isinstance(body, bytes | bytearray | memoryview):
            if body:
                await self._send(h11.Data(data=bytes(body)))
        else:
            await self._stream_body(request, body)
        await self._send(h11.EndOfMessage())

    def _response_head(
        self, response: Response, body: bytes | AsyncIterable[Chunk], method: str
    ) -> h11.Response:
        if not 200 <= response.status <= 599:
            raise ValueError(f"status {response.status} is not a final response")
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        names = {k.lower() for k, _ in headers}
        if response.status == 204:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        elif (
            isinstance(body, bytes | bytearray | memoryview)
            and b"content-length" not in names
            and response.status != 304
        ):
            headers.append((b"Content-Length", str(len(body)).encode()))
        if b"date" not in names:
            headers.append((b"Date", email.utils.formatdate(usegmt=True).encode()))
        if b"server" not in names:
            headers.append((b"Server", SERVER_NAME.encode()))
        try:
            reason = http.HTTPStatus(response.status).phrase.encode()
        except ValueError:
            reason = b""
        return h11.Response(status_code=response.status, headers=headers, reason=reason)

    async def _stream_body(self, request: Request, body: AsyncIterable[Chunk]) -> None:
        iterator = aiter(body)
        try:
            while True:
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                except Exception:
                    log.exception(
                        "response body of %s %s failed mid-way; closing the connection",
                        request.method,
                        request.target,
                    )
                    raise _Close("response body failed") from None
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    log.error(
                        "response body of %s %s yielded a %s",
                        request.method,
                        request.target,
                        type(chunk).__name__,
                    )
                    raise _Close("response body yielded something other than bytes")
                if chunk:
                    try:
                        # h11 passes any bytes-like body chunk through as it is.
                        await self._send(h11.Data(data=cast(bytes, chunk)))
                    except h11.LocalProtocolError as exc:  # more than its Content-Length
                        log.error("response body of %s %s: %s", request.method, request.target, exc)
                        raise _Close("response body longer than announced") from None
        finally:
            await _close_iterable(iterator)

    async def _send_error(self, status: int, text: str) -> None:
        """Answer a request we cannot serve and mark the connection for closing."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = _error_response(status, text, close=True)
        head = self._response_head(response, response.body, "GET")
        try:
            await self._send(head)
            await self._send(h11.Data(data=bytes(response.body)))  # type: ignore[arg-type]
            await self._send(h11.EndOfMessage())
        except (_Close, h11.LocalProtocolError):
            pass

    async def _drain(self, body: BodyReader) -> bool:
        """Drop what the handler left of the request body; False if not worth it."""
        if self.h11.their_state is h11.DONE:
            return True
        try:
            while body.bytes_read <= DRAIN_LIMIT:
                if not await body.read(RECEIVE_SIZE):
                    return self.h11.their_state is h11.DONE
        except (ClientDisconnected, MalformedBody):
            pass
        return False

    async def _lingering_close(self) -> None:
        stream = self.stream
        with trio.move_on_after(min(LINGER_SECONDS, self.idle_timeout)):
            try:
                send_eof = getattr(stream, "send_eof", None)
                if send_eof is not None:
                    await send_eof()
                    while await stream.receive_some(RECEIVE_SIZE):
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


def _error_response(status: int, text: str, *, close: bool) -> Response:
    phrase = http.HTTPStatus(status).phrase
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    if close:
        headers.append(("Connection", "close"))
    return Response(status, headers, f"{status} {phrase}: {text}\n".encode())


async def _close_iterable(body: object) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None and not isinstance(body, bytes | bytearray | memoryview):
        try:
            await aclose()
        except Exception:
            log.exception("closing a response body failed")
