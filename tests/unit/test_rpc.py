"""The framed RPC connection, over in-memory streams."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from store.errors import Code, RemoteError
from store.rpc import SEND_ALONE, TAIL_ARG, ConnectionLost, Later, RpcConnection, _batched
from store.wire.frames import encode_frame, encode_request, pack_args


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


async def test_a_later_answer_comes_from_a_callback_in_any_order() -> None:
    left, right = trio.testing.memory_stream_pair()
    held: dict[int, Later] = {}

    def handler(op: str, args: dict[str, Any]) -> Any:
        later = Later()
        if op == "now":  # settled before the connection listens
            later.resolve({"n": args["n"]})
        else:
            held[args["n"]] = later
        return later

    client = RpcConnection(left, name="client")
    server = RpcConnection(right, handler=handler, name="server")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        nursery.start_soon(server.run)
        assert await client.call("now", {"n": 7}) == {"n": 7}
        calls = [client.start_call("held", {"n": n}) for n in range(3)]
        while len(held) < 3:
            await trio.sleep(0.01)
        held[2].resolve({"n": 2})
        held[0].fail(RemoteError(Code.ENOSPC, "full"))
        held[0].resolve({"n": "too late"})  # only the first outcome counts
        held[1].resolve({"n": 1})
        assert await client.finish_call(calls[2], "held") == {"n": 2}
        assert await client.finish_call(calls[1], "held") == {"n": 1}
        with pytest.raises(RemoteError) as caught:
            await client.finish_call(calls[0], "held")
        assert caught.value.code == Code.ENOSPC and caught.value.message == "full"
        nursery.cancel_scope.cancel()


async def test_a_settled_wait_tells_a_missing_answer_from_a_lost_link() -> None:
    left, right = trio.testing.memory_stream_pair()
    client = RpcConnection(left, name="client")
    server = RpcConnection(right, handler=lambda op, args: Later(), name="server")  # never
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        nursery.start_soon(server.run)
        pending = client.start_call("held", {})
        with trio.move_on_after(0.2):
            await pending.done.wait()
        with pytest.raises(RemoteError) as caught:
            client.settle_call(pending, "held", 0.2)
        assert caught.value.code == Code.ETIMEDOUT
        lost = client.start_call("held", {})
        await server.aclose()
        with trio.fail_after(5):
            await lost.done.wait()
        with pytest.raises(ConnectionLost):
            client.settle_call(lost, "held", 5)
        nursery.cancel_scope.cancel()


async def test_a_later_settled_after_its_connection_closed_is_dropped() -> None:
    left, right = trio.testing.memory_stream_pair()
    held: list[Later] = []

    def handler(op: str, args: dict[str, Any]) -> Any:
        held.append(Later())
        return held[-1]

    client = RpcConnection(left, name="client")
    server = RpcConnection(right, handler=handler, name="server")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        nursery.start_soon(server.run)
        pending = client.start_call("held", {})
        while not held:
            await trio.sleep(0.01)
        await client.aclose()
        with trio.fail_after(5):
            await server.closed.wait()
        held[0].resolve({"too": "late"})  # nothing to answer to: no error, nothing queued
        assert server._send.statistics().current_buffer_used == 0
        assert pending.lost
        nursery.cancel_scope.cancel()


def test_large_frame_parts_are_sent_alone_and_small_ones_together() -> None:
    big, other = b"B" * SEND_ALONE, b"C" * (SEND_ALONE + 1)
    parts = [b"h1", big, b"a", b"b", other, b"t"]
    sent = _batched(parts)
    assert sent == [b"h1", big, b"ab", other, b"t"]
    assert sent[1] is big and sent[3] is other  # sent as they are, not copied
    assert b"".join(sent) == b"".join(parts)


async def test_a_raw_tail_reaches_the_handler_with_the_arguments() -> None:
    left, right = trio.testing.memory_stream_pair()
    seen: list[tuple[Any, bytes]] = []

    def handler(op: str, args: dict[str, Any]) -> Any:
        tail = args.pop(TAIL_ARG)
        seen.append((args, bytes(tail)))
        return len(tail)

    client = RpcConnection(left, name="client")
    server = RpcConnection(right, handler=handler, name="server")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        nursery.start_soon(server.run)
        data = b"t" * (3 * SEND_ALONE)
        pending = client.start_packed_call("put", pack_args({"n": 1}), (data, b"end"))
        assert await client.finish_call(pending, "put") == len(data) + 3
        assert seen == [({"n": 1}, data + b"end")]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("forged", ["tailed answer", "tail named in arguments"])
async def test_a_misplaced_tail_ends_the_connection(forged: str) -> None:
    left, right = trio.testing.memory_stream_pair()
    called: list[str] = []
    conn = RpcConnection(left, handler=lambda op, args: called.append(op), name="peer")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.run)
        if forged == "tailed answer":
            head, packed, tail = encode_request(1, "x", pack_args({}), (b"zz",))
            head = head.replace(b"\xa3req", b"\xa3res")  # an answer cannot carry a tail
            await right.send_all(head + packed + tail)
        else:
            await right.send_all(encode_frame({"t": "req", "id": 1, "op": "x", "a": {TAIL_ARG: 1}}))
        with trio.fail_after(5):
            await conn.closed.wait()
    assert called == []
