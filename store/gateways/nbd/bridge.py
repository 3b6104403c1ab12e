"""A trio event loop in a thread of its own, serving calls from other threads.

nbdkit calls the plugin from its own threads (several at once with the thread models
that allow it) and forks when it daemonizes, so the loop is started in ``after_fork``:
a thread runs ``trio.run``, enters the service's async context manager (which connects
to the cluster) and then waits to be told to stop. nbdkit's threads call into it with
``trio.from_thread.run`` and block until their coroutine finishes; Python's GIL is
released while they wait, so the loop runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, TypeVar

import trio

from store.gateways.nbd.errors import GatewayStopped

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("store.nbd")


class TrioThread(Generic[T]):
    def __init__(self, name: str = "store-trio") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None

    def start(self, service: Callable[[], AbstractAsyncContextManager[T]], timeout: float) -> T:
        """Run the loop and enter ``service()`` in it; returns what it yields.

        Raises whatever entering the service raised, or TimeoutError.
        """
        ready = threading.Event()
        result: dict[str, Any] = {}

        async def main() -> None:
            try:
                async with service() as value:
                    self._token = trio.lowlevel.current_trio_token()
                    self._stop = trio.Event()
                    result["value"] = value
                    ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                if not ready.is_set():
                    result["error"] = exc
                    ready.set()
                    return
                log.error("the gateway's event loop failed: %s", exc, exc_info=exc)
                raise

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
        if self._token is None:
            raise GatewayStopped("the gateway is not running")
        try:
            return trio.from_thread.run(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise GatewayStopped("the gateway has stopped") from None

    def stop(self, timeout: float) -> None:
        """Leave the service (it cleans up) and end the loop; waits up to ``timeout``."""
        token, stop, thread = self._token, self._stop, self._thread
        self._token = None
        if token is not None and stop is not None:
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        if thread is not None:
            thread.join(timeout)
