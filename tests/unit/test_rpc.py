"""The framed RPC connection, over in-memory streams."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from store.rpc import RpcConnection
from store.wire.frames import encode_frame


async def test_calls_are_answered_and_handler_order_is_arrival_order() -> None:
    left, right = trio.testing.memory_stream_pair()
    order: list[int] = []

    def handler(op: str, args: dict[str, Any]) -> Any:
        order.append(args["n"])
        return {"echo": args["n"]}

    client = RpcConnection(left, name="client")
    server = RpcConnection(right, handler=handler, name="server")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        nursery.start_soon(server.run)
        pending = [client.start_call("echo", {"n": n}) for n in range(50)]
        answers = [await client.finish_call(p, "echo") for p in pending]
        assert [a["echo"] for a in answers] == list(range(50))
        assert order == list(range(50))
        nursery.cancel_scope.cancel()


async def test_a_malformed_answer_ends_the_connection_not_the_process() -> None:
    left, right = trio.testing.memory_stream_pair()
    conn = RpcConnection(left, name="peer")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        await right.send_all(encode_frame({"t": "res", "id": [1], "ok": True}))
        with trio.fail_after(5):
            await conn.closed.wait()


async def test_a_peer_that_stops_reading_loses_its_connection() -> None:
    left, _right = trio.testing.lockstep_stream_pair()  # nobody ever reads the other end
    conn = RpcConnection(left, name="slow")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        for _ in range(5000):  # more than the outbox holds: must not raise
            conn.send_event("map", {"epoch": 1})
        with trio.fail_after(5):
            await conn.closed.wait()
