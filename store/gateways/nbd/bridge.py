"""A trio event loop in a thread of its own, serving calls from other threads.

nbdkit calls the plugin from its own threads (several at once with the thread models
that allow it) and forks when it daemonizes, so the loop is started in ``after_fork``:
a thread runs ``trio.run``, enters the service's async context manager (which connects
to the cluster) and then waits to be told to stop. nbdkit's threads call into it with
``run`` and block until their coroutine finishes; Python's GIL is released while they
wait, so the loop runs.

A call costs the loop little, since an NBD request is one: the calling thread hands the
loop its call with ``run_sync_soon`` and waits on a lock of the call's own, which the loop
releases when the call is done. The loop runs calls in long-lived worker tasks, starting
another only when every worker is busy (``trio.from_thread.run`` spawns a task and makes
a ``queue.Queue`` per call). A call the loop can no longer run (it is stopping, or has
stopped) fails with ``GatewayStopped``; none is left waiting.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar, cast

import trio

from store.gateways.nbd.errors import GatewayStopped

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("store.nbd")


class _Call:
    """A coroutine function to run in the loop for another thread, and its outcome: set
    before ``done`` is released."""

    __slots__ = ("args", "done", "error", "fn", "value")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()

    def finish(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.done.release()


class TrioThread(Generic[T]):
    def __init__(self, name: str = "store-trio") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        # Loop-side state, touched only in the loop's thread:
        self._nursery: trio.Nursery | None = None  # where workers run; None: not taking calls
        self._to_workers, self._for_workers = trio.open_memory_channel[_Call](math.inf)
        self._free = 0  # workers waiting for a call and not yet promised one
        self._pending: set[_Call] = set()  # calls taken and not yet finished

    def start(self, service: Callable[[], AbstractAsyncContextManager[T]], timeout: float) -> T:
        """Run the loop and enter ``service()`` in it; returns what it yields.

        Raises whatever entering the service raised, or TimeoutError.
        """
        ready = threading.Event()
        result: dict[str, Any] = {}

        async def main() -> None:
            try:
                async with service() as value, trio.open_nursery() as nursery:
                    self._token = trio.lowlevel.current_trio_token()
                    self._stop = trio.Event()
                    self._nursery = nursery
                    result["value"] = value
                    ready.set()
                    await self._stop.wait()
                    self._stop_calls()
            except BaseException as exc:
                if not ready.is_set():
                    result["error"] = exc
                    ready.set()
                    return
                log.error("the gateway's event loop failed: %s", exc, exc_info=exc)
                raise
            finally:
                self._stop_calls()

        def run() -> None:
            try:
                trio.run(main)
            except BaseException as exc:  # logged above; the thread just ends
                log.debug("event loop thread ended with %r", exc)

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError(f"the gateway did not start within {timeout:.0f} s")
        if "error" in result:
            raise result["error"]
        return result["value"]

    def run(self, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Run ``fn(*args)`` in the loop and wait for its result (from any other thread)."""
        token = self._token
        if token is None:
            raise GatewayStopped("the gateway is not running")
        call = _Call(fn, args)
        try:
            token.run_sync_soon(self._take, call)
        except trio.RunFinishedError:
            raise GatewayStopped("the gateway has stopped") from None
        call.done.acquire()
        if call.error is not None:
            raise call.error
        return cast(R, call.value)

    def stop(self, timeout: float) -> None:
        """Leave the service (it cleans up) and end the loop; waits up to ``timeout``."""
        token, stop, thread = self._token, self._stop, self._thread
        self._token = None
        if token is not None and stop is not None:
            try:
                token.run_sync_soon(stop.set)
            except trio.RunFinishedError:
                pass
        if thread is not None:
            thread.join(timeout)

    # --- in the loop's thread ------------------------------------------------------------

    def _take(self, call: _Call) -> None:
        nursery = self._nursery
        if nursery is None:
            call.finish(error=GatewayStopped("the gateway is stopping"))
            return
        self._pending.add(call)
        if self._free:
            self._free -= 1
            self._to_workers.send_nowait(call)
        else:
            nursery.start_soon(self._worker, call)

    async def _worker(self, call: _Call) -> None:
        while True:
            try:
                value = await call.fn(*call.args)
            except trio.Cancelled:
                self._settle(call, error=GatewayStopped("the gateway stopped during the request"))
                raise
            except BaseException as exc:
                self._settle(call, error=exc)
            else:
                self._settle(call, value)
            self._free += 1
            call = await self._for_workers.receive()

    def _settle(self, call: _Call, value: Any = None, error: BaseException | None = None) -> None:
        if call in self._pending:  # else _stop_calls failed it already
            self._pending.discard(call)
            call.finish(value, error)

    def _stop_calls(self) -> None:
        """Take no more calls; fail those taken and not finished (the workers are being
        cancelled, or never ran them)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
            self._nursery = None
        pending, self._pending = self._pending, set()
        for call in pending:
            call.finish(error=GatewayStopped("the gateway stopped during the request"))
