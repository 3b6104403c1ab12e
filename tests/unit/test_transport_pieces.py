"""Stage pieces sent in bursts by the client transport, over the lossy in-memory network
of ``tests.unit.transport_rig``, to its fake daemon (which opens them into a real staging
area)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.testing

from store.errors import ClientTimeout, Code
from store.wire import stages
from store.wire.stages import StagePiece
from tests.unit.transport_rig import DAEMON, OSD_ID, Rig

PIECE = 1000  # bytes per piece: small, so that a stage is many pieces


def cut(data: bytes, token: int) -> list[StagePiece]:
    return [
        stages.stage_piece(token, at, len(data), 1, 2, data[at : at + PIECE])
        for at in range(0, len(data), PIECE)
    ]


async def send(rig: Rig, pieces: list[StagePiece], timeout: float = 300.0) -> tuple:  # type: ignore[type-arg]
    return await rig.transport.send_pieces(
        OSD_ID, DAEMON, pieces, encrypt=True, deadline=trio.current_time() + timeout
    )


def idle(rig: Rig) -> bool:
    """Every permit of the link's window given back, no answer waited for."""
    (link,) = rig.transport.links.values()
    return link.window.value == 64 and not rig.transport._waiters


def held(rig: Rig, token: int, size: int) -> bytes:
    session = next(iter(rig.daemon.sessions.sessions.values()))
    return bytes(rig.daemon.staging.take((session.client, session.instance), token, 1, 2, size))


async def test_every_piece_arrives_through_loss_and_the_window_is_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=31, drop=0.3, duplicate=0.1)
        data = random.Random(1).randbytes(300 * PIECE + 123)
        stages_sent = [(7, data), (8, data[::-1])]
        results = []

        async def one(token: int, payload: bytes) -> None:
            results.append(await send(rig, cut(payload, token)))

        async with trio.open_nursery() as senders:  # two stages at once share the window
            for token, payload in stages_sent:
                senders.start_soon(one, token, payload)
        assert idle(rig)
        for token, payload in stages_sent:
            assert held(rig, token, len(payload)) == payload
        nursery.cancel_scope.cancel()
    assert [(reply["r"], left) for reply, _, left in results] == [(0, []), (0, [])]
    stats = rig.transport.stats
    assert stats.retransmits > 0 and stats.timeouts == 0
    assert rig.daemon.served["piece_again"] > 0  # answers were lost, pieces sent again
    # Pieces were acknowledged both together and alone (and some of those answers lost).
    assert rig.daemon.served["acks_together"] > 0 and rig.daemon.served["ack_alone"] > 0


async def test_a_burst_never_has_more_pieces_in_flight_than_the_window(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=32, drop=0.0, duplicate=0.0, max_delay=0.05)
        in_flight = most = 0
        network, daemon = rig.network, rig.daemon
        transmit, real_reply = network.transmit, daemon._reply

        def counting(data: bytes, source: object, destination: object) -> None:
            nonlocal in_flight, most
            if destination == DAEMON and len(data) > 500:
                in_flight += 1
                most = max(most, in_flight)
            transmit(data, source, destination)  # type: ignore[arg-type]

        async def acknowledging(*args: Any) -> bytes:
            nonlocal in_flight
            in_flight -= len(stages.acknowledged(args[-1], 0))  # one answer, maybe of many
            return await real_reply(*args)

        monkeypatch.setattr(network, "transmit", counting)
        monkeypatch.setattr(daemon, "_reply", acknowledging)
        data = random.Random(2).randbytes(500 * PIECE)
        reply, _, left = await send(rig, cut(data, 9))
        assert reply["r"] == 0 and not left
        assert held(rig, 9, len(data)) == data
        nursery.cancel_scope.cancel()
    assert 32 < most <= 64


async def test_each_piece_an_answer_names_is_taken_as_acknowledged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=36, drop=0.0, duplicate=0.0, max_delay=0.0)
        data = random.Random(6).randbytes(200 * PIECE)
        reply, _, left = await send(rig, cut(data, 13))
        assert reply["r"] == 0 and not left
        assert held(rig, 13, len(data)) == data
        nursery.cancel_scope.cancel()
    # Answers named many pieces each, and none of those pieces was sent again.
    assert rig.daemon.served["ack_alone"] < rig.daemon.served["acks_together"]
    assert rig.transport.stats.retransmits == 0 and rig.daemon.served["piece_again"] == 0


async def test_an_error_answer_ends_the_burst_with_the_pieces_not_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=33, drop=0.0, duplicate=0.0, max_delay=0.01)
        data = random.Random(3).randbytes(100 * PIECE)
        pieces = cut(data, 10)
        reply, _, left = await send(rig, pieces[:40])
        assert reply["r"] == 0 and not left
        rig.daemon.piece_answer = Code.EAGAIN  # say, the staging area is full
        reply, epoch, left = await send(rig, pieces)
        assert reply["r"] == Code.EAGAIN and epoch > 0
        assert left == list(range(len(pieces)))  # none was held by this call
        await trio.sleep(1)  # answers to the pieces still in flight come and are dropped
        assert idle(rig)
        rig.daemon.piece_answer = Code.OK
        reply, _, left = await send(rig, [pieces[i] for i in left])
        assert reply["r"] == 0 and not left
        assert held(rig, 10, len(data)) == data
        nursery.cancel_scope.cancel()


async def test_a_restarted_daemon_gets_the_rest_on_a_new_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=34, drop=0.1, duplicate=0.0)
        data = random.Random(4).randbytes(400 * PIECE)

        async def restart_soon() -> None:
            while rig.daemon.served["piece"] < 100:
                await trio.sleep(0.01)
            rig.daemon.restart()  # sessions lost (its staging area, in this fake, is not)

        nursery.start_soon(restart_soon)
        reply, _, left = await send(rig, cut(data, 11))
        assert reply["r"] == 0 and not left
        assert rig.transport.stats.resets > 0 and rig.daemon.served["hello"] >= 2
        assert held(rig, 11, len(data)) == data
        nursery.cancel_scope.cancel()


async def test_a_daemon_that_stops_answering_ends_the_burst_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=35, drop=0.0, duplicate=0.0, max_delay=0.0)
        data = random.Random(5).randbytes(50 * PIECE)
        rig.daemon.answer_requests = False
        start = trio.current_time()
        with pytest.raises(ClientTimeout):
            await send(rig, cut(data, 12), timeout=20.0)
        assert 20.0 <= trio.current_time() - start < 21.0
        assert idle(rig)
        nursery.cancel_scope.cancel()
    # Silence for so long made the client begin new sessions, as a request would.
    assert rig.transport.stats.rehellos >= 1
    assert rig.daemon.served["hello"] >= 2
