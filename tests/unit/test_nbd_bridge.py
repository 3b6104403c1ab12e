"""The NBD plugin's bridge: a trio loop in a thread, called from other threads."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from store.gateways.nbd.bridge import TrioThread
from store.gateways.nbd.errors import GatewayStopped


class Service:
    def __init__(self) -> None:
        self.entered = False
        self.left = False
        self.running = 0
        self.most_running = 0
        self.release = trio.Event()
        self.waiting_forever = 0

    async def echo(self, value: object) -> object:
        await trio.sleep(0)
        return value

    async def held(self) -> None:
        """Wait until released, counting how many wait together."""
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.running == 8:
                self.release.set()
            await self.release.wait()
        finally:
            self.running -= 1

    async def fail(self) -> None:
        await trio.sleep(0)
        raise ValueError("asked to fail")

    async def forever(self) -> None:
        self.waiting_forever += 1
        await trio.sleep_forever()

    async def count_forever(self) -> int:
        return self.waiting_forever


def serving() -> tuple[TrioThread[Service], Service]:
    service = Service()

    @asynccontextmanager
    async def run() -> AsyncIterator[Service]:
        service.entered = True
        try:
            yield service
        finally:
            service.left = True

    loop: TrioThread[Service] = TrioThread("test-loop")
    assert loop.start(run, timeout=10) is service
    return loop, service


def in_threads(count: int, target: object) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]  # type: ignore[arg-type]
    for thread in threads:
        thread.start()
    return threads


def test_calls_from_many_threads_run_together_and_get_their_own_results() -> None:
    loop, service = serving()
    try:
        results: list[object] = []
        lock = threading.Lock()
        callers = itertools.count()  # not thread idents: a finished thread's is reused

        def caller() -> None:
            with lock:
                me = next(callers)
            for n in range(200):
                value = loop.run(service.echo, (me, n))
                with lock:
                    results.append(value)

        for thread in in_threads(8, caller):
            thread.join(10)
        assert len(results) == 8 * 200
        assert len(set(results)) == 8 * 200  # each caller got its own answers
        # Eight calls wait at once: each ran in its own worker, none waited for another.
        for thread in in_threads(8, lambda: loop.run(service.held)):
            thread.join(10)
        assert service.most_running == 8
    finally:
        loop.stop(timeout=10)
    assert service.left


def test_an_error_reaches_the_caller_and_the_loop_goes_on() -> None:
    loop, service = serving()
    try:
        with pytest.raises(ValueError, match="asked to fail"):
            loop.run(service.fail)
        assert loop.run(service.echo, 5) == 5
    finally:
        loop.stop(timeout=10)


def test_stopping_fails_calls_under_way_and_refuses_new_ones() -> None:
    loop, service = serving()
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            loop.run(service.forever)
        except BaseException as exc:  # the test looks at whatever arrived
            errors.append(exc)

    threads = in_threads(4, caller)
    deadline = time.monotonic() + 10
    while loop.run(service.count_forever) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not errors
    loop.stop(timeout=10)
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()  # nobody is left waiting
    assert len(errors) == 4
    assert all(isinstance(exc, GatewayStopped) for exc in errors)
    with pytest.raises(GatewayStopped):
        loop.run(service.echo, 1)
    assert service.left
