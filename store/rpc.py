"""Request/response and pushed events over one framed TCP (TLS) stream.

Theory of operation
-------------------
Both the master link and the daemon-to-daemon links speak the same thing: length-prefixed
msgpack frames (``store.wire.frames``) of three shapes::

    {"t": "req", "id": N, "op": NAME, "a": ARGS}      a request
    {"t": "res", "id": N, "ok": True, "r": RESULT}     its answer
    {"t": "res", "id": N, "ok": False, "c": CODE, "m": MESSAGE}
    {"t": "ev", "ev": NAME, "a": ARGS}                 an event nobody answers (map updates)

A request may carry a raw tail (bytes never packed: a replicated write's data); its
handler finds it among its arguments under ``TAIL_ARG``, as a view of what was received.
A stream that can decrypt into a buffer (``TlsStream.receive_into``) receives a large
frame straight into one of its size.

One task reads frames and one task writes them; writers queue frames on a channel and the
writer task sends everything queued in one ``send_all``, so a burst of small replication
frames costs one TLS record and one syscall.

Incoming requests are handed to the handler *in the reader task, in arrival order*. The
handler returns a plain result (answered at once), an awaitable (run in its own task,
answered when it finishes) or a :class:`Later` (answered when a callback settles it, with
no task: a replica answers a forwarded write from its commit's callback). Replication
relies on this: a replica queues each forwarded write for its disk before the next frame
is read, so writes reach the disk in the order the primary sent them, while their
completions overlap.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from store.errors import Code, FrameError, RemoteError, StoreError
from store.wire.frames import Data, FrameDecoder, Tailed, encode_frame, encode_request

log = logging.getLogger(__name__)

SEND_ALONE = 64 * 1024  # parts this large are sent as they are, not joined to others
TAIL_ARG = "\x00tail"  # where a request's raw tail (frames.Tailed) reaches its handler

Handler = Callable[[str, dict[str, Any]], Any]
EventHandler = Callable[[str, dict[str, Any]], None]


class ConnectionLost(StoreError):
    """The peer went away; requests in flight on this connection failed."""


class RpcConnection:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        handler: Handler | None = None,
        on_event: EventHandler | None = None,
        name: str = "peer",
        max_frame: int = 256 * 1024 * 1024,
    ) -> None:
        self.stream = stream
        self.name = name
        self._handler = handler
        self._on_event = on_event
        self._decoder = FrameDecoder(max_frame=max_frame)
        self._ids = itertools.count(1)
        self._waiting: dict[int, PendingCall] = {}
        self._send, self._outbox = trio.open_memory_channel[bytes | tuple[Data, ...]](4096)
        self.closed = trio.Event()
        self._scope: trio.CancelScope | None = None
        self._overflowed = False
        self.context: dict[str, Any] = {}  # whatever the owner learns about the peer

    async def run(self) -> None:
        """Serve the connection until either side closes it. Never raises for peer faults."""
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self._overflowed:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._guarded, self._write_loop, nursery.cancel_scope)
                await self._guarded(lambda: self._read_loop(nursery), nursery.cancel_scope)
        finally:
            self._fail_waiting()
            self.closed.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await self.stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

    async def _guarded(self, loop: Callable[[], Awaitable[None]], scope: trio.CancelScope) -> None:
        # Each loop ends the connection on its own faults, so that no fault of the peer
        # ever escapes as an exception group into the caller's nursery.
        try:
            await loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("connection to %s lost: %s", self.name, exc)
        except FrameError as exc:
            log.warning("dropping connection to %s: %s", self.name, exc)
        except Exception:
            # A bug met by odd input must cost this connection, never the process.
            log.exception("dropping connection to %s after an internal error", self.name)
        finally:
            scope.cancel()

    async def call(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Send a request and wait for its answer; raises RemoteError for an error answer."""
        return await self.finish_call(self.start_call(op, args), op, timeout)

    def start_call(self, op: str, args: dict[str, Any] | None = None) -> PendingCall:
        """Queue a request now (synchronously, so callers control the order of requests)."""
        return self._start(
            lambda req_id: encode_frame({"t": "req", "id": req_id, "op": op, "a": args or {}})
        )

    def start_packed_call(
        self, op: str, packed_args: bytes, tail: tuple[Data, ...] = ()
    ) -> PendingCall:
        """``start_call`` with arguments packed already (``frames.pack_args``): one
        packing of a large write serves every replica it is forwarded to. A ``tail``
        goes raw after them; the handler finds it in its arguments under ``TAIL_ARG``."""
        return self._start(lambda req_id: encode_request(req_id, op, packed_args, tail))

    def _start(self, frame_for: Callable[[int], bytes | tuple[Data, ...]]) -> PendingCall:
        if self.closed.is_set():
            raise ConnectionLost(f"connection to {self.name} is closed")
        req_id = next(self._ids)
        pending = PendingCall(req_id)
        self._waiting[req_id] = pending
        try:
            self._put(frame_for(req_id))
        except ConnectionLost:
            del self._waiting[req_id]
            raise
        return pending

    async def finish_call(self, pending: PendingCall, op: str, timeout: float = 30.0) -> Any:
        try:
            with trio.move_on_after(timeout):
                await pending.done.wait()
        finally:
            self.abandon_call(pending)
        return self.settle_call(pending, op, timeout)

    def abandon_call(self, pending: PendingCall) -> None:
        """Stop waiting for an answer (one that comes later is dropped)."""
        self._waiting.pop(pending.req_id, None)

    def settle_call(self, pending: PendingCall, op: str, timeout: float) -> Any:
        """The outcome of a call whose wait is over (answered, or waited for ``timeout``
        seconds): its result, or the error it ended with."""
        self.abandon_call(pending)
        if not pending.done.is_set():
            raise RemoteError(Code.ETIMEDOUT, f"{self.name} did not answer {op} in {timeout}s")
        if pending.lost:
            raise ConnectionLost(f"connection to {self.name} lost during {op}")
        if pending.error is not None:
            raise pending.error
        return pending.result

    def send_event(self, name: str, args: dict[str, Any]) -> None:
        """Push an event; a peer too slow to take it loses its connection, not us."""
        if self.closed.is_set():
            return
        try:
            self._queue({"t": "ev", "ev": name, "a": args})
        except ConnectionLost:
            log.warning("closing the connection to %s: it does not read what we send", self.name)

    async def aclose(self) -> None:
        self._send.close()
        with trio.move_on_after(1):
            await self.closed.wait()

    # --- internals -------------------------------------------------------------

    def _queue(self, message: dict[str, Any]) -> None:
        self._put(encode_frame(message))

    def _put(self, frame: bytes | tuple[Data, ...]) -> None:
        try:
            self._send.send_nowait(frame)
        except trio.WouldBlock:
            # The peer stopped reading and 4096 frames are queued: it is as good as gone.
            self._overflowed = True
            if self._scope is not None:
                self._scope.cancel()
            raise ConnectionLost(f"connection to {self.name} is not draining") from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionLost(f"connection to {self.name} is closed") from None

    async def _write_loop(self) -> None:
        async for frame in self._outbox:
            parts: list[Data] = []
            while True:
                if isinstance(frame, tuple):
                    parts.extend(frame)
                else:
                    parts.append(frame)
                try:
                    frame = self._outbox.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
            for out in _batched(parts):
                await self.stream.send_all(out)
        # Channel closed by aclose(): say goodbye by closing our side.
        await self.stream.aclose()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        decoder = self._decoder
        # A stream that can decrypt into a buffer receives large frames in place.
        receive_into: Callable[[memoryview], Awaitable[int]] | None
        receive_into = getattr(self.stream, "receive_into", None)
        while True:
            place = decoder.reserve() if receive_into is not None else None
            if place is not None and receive_into is not None:
                with place:
                    got = await receive_into(place)
                if not got:
                    return
                decoder.filled(got)
            else:
                data = await self.stream.receive_some(256 * 1024)
                if not data:
                    return
                decoder.feed(data)
            while (message := decoder.next_frame()) is not None:
                self._dispatch(message, nursery)

    def _dispatch(self, message: object, nursery: trio.Nursery) -> None:
        tail = None
        if isinstance(message, Tailed):
            message, tail = message
        if not isinstance(message, dict):
            raise FrameError("frame is not a map")
        kind = message.get("t")
        if tail is not None and kind != "req":
            raise FrameError("only a request may carry a raw tail")
        if kind == "res":
            answer_id = message.get("id")
            if not isinstance(answer_id, int):
                raise FrameError("malformed answer frame")
            pending = self._waiting.get(answer_id)
            if pending is None:
                return  # answer to a call that timed out
            if message.get("ok"):
                pending.result = message.get("r")
            else:
                try:
                    code = Code(message.get("c", Code.EINVAL))
                except ValueError:
                    code = Code.EINVAL
                pending.error = RemoteError(code, str(message.get("m", "")))
            pending.done.set()
        elif kind == "req":
            req_id, op, args = message.get("id"), message.get("op"), message.get("a")
            if not isinstance(req_id, int) or not isinstance(op, str) or not isinstance(args, dict):
                raise FrameError("malformed request frame")
            if tail is not None:
                args[TAIL_ARG] = tail
            elif TAIL_ARG in args:
                raise FrameError("a request's arguments name a tail it does not have")
            self._handle_request(req_id, op, args, nursery)
        elif kind == "ev":
            name, args = message.get("ev"), message.get("a")
            if not isinstance(name, str) or not isinstance(args, dict):
                raise FrameError("malformed event frame")
            if self._on_event is not None:
                try:
                    self._on_event(name, args)
                except Exception:
                    log.exception("event %s from %s failed", name, self.name)
        else:
            raise FrameError(f"unknown frame type {kind!r}")

    def _handle_request(
        self, req_id: int, op: str, args: dict[str, Any], nursery: trio.Nursery
    ) -> None:
        if self._handler is None:
            self._answer_error(req_id, Code.EINVAL, f"{self.name} takes no requests")
            return
        try:
            outcome = self._handler(op, args)
        except RemoteError as exc:
            self._answer_error(req_id, exc.code, exc.message)
            return
        except StoreError as exc:
            self._answer_error(req_id, Code.EINVAL, str(exc))
            return
        except Exception:
            log.exception("request %s from %s failed", op, self.name)
            self._answer_error(req_id, Code.EIO, f"internal error handling {op}")
            return
        if isinstance(outcome, Later):
            outcome.listen(functools.partial(self._settled, req_id))
        elif inspect.isawaitable(outcome):
            nursery.start_soon(self._finish, req_id, op, outcome)
        else:
            self._answer(req_id, outcome)

    def _settled(self, req_id: int, result: Any, error: RemoteError | None) -> None:
        if self.closed.is_set():
            return  # the asker is gone with the connection
        if error is None:
            self._answer(req_id, result)
        else:
            self._answer_error(req_id, error.code, error.message)

    async def _finish(self, req_id: int, op: str, outcome: Awaitable[Any]) -> None:
        try:
            result = await outcome
        except RemoteError as exc:
            self._answer_error(req_id, exc.code, exc.message)
        except StoreError as exc:
            self._answer_error(req_id, Code.EINVAL, str(exc))
        except Exception:
            log.exception("request %s from %s failed", op, self.name)
            self._answer_error(req_id, Code.EIO, f"internal error handling {op}")
        else:
            self._answer(req_id, result)

    def _answer(self, req_id: int, result: Any) -> None:
        try:
            self._queue({"t": "res", "id": req_id, "ok": True, "r": result})
        except ConnectionLost:
            pass

    def _answer_error(self, req_id: int, code: Code, message: str) -> None:
        try:
            self._queue({"t": "res", "id": req_id, "ok": False, "c": int(code), "m": message})
        except ConnectionLost:
            pass

    def _fail_waiting(self) -> None:
        for pending in self._waiting.values():
            pending.lost = True
            pending.done.set()


def _batched(parts: list[Data]) -> list[Data]:
    """What to send for these frame parts, in order: small ones together (one TLS record,
    one system call), a large one on its own rather than copied into the rest."""
    out: list[Data] = []
    small: list[Data] = []
    for part in parts:
        if len(part) < SEND_ALONE:
            small.append(part)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(part)
    if small:
        out.append(b"".join(small))
    return out


class Later:
    """What a request handler returns to answer from a callback rather than a task
    (a replicated write is answered by its commit's callback): ``resolve`` or ``fail``
    once; the connection sends the answer then."""

    __slots__ = ("_listener", "_outcome")

    def __init__(self) -> None:
        self._listener: Callable[[Any, RemoteError | None], None] | None = None
        self._outcome: tuple[Any, RemoteError | None] | None = None

    def resolve(self, result: Any) -> None:
        self._settle(result, None)

    def fail(self, error: RemoteError) -> None:
        self._settle(None, error)

    def _settle(self, result: Any, error: RemoteError | None) -> None:
        if self._outcome is None:
            self._outcome = (result, error)
            if self._listener is not None:
                self._listener(result, error)

    def listen(self, listener: Callable[[Any, RemoteError | None], None]) -> None:
        self._listener = listener
        if self._outcome is not None:
            listener(*self._outcome)


class PendingCall:
    __slots__ = ("done", "error", "lost", "req_id", "result")

    def __init__(self, req_id: int) -> None:
        self.req_id = req_id
        self.done = trio.Event()
        self.result: Any = None
        self.error: RemoteError | None = None
        self.lost = False


@functools.lru_cache(maxsize=4096)  # clients parse a daemon's address for every request
def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT` or `:PORT` → (host, port); ConfigError-free: ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or default_host
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, number
