"""The client transport over a terrible in-memory network, against a fake daemon
(``tests.unit.transport_rig``): requests, retransmissions, fragmented replies, sessions."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import trio
import trio.testing

from store.client.links import RttEstimator
from store.client.transport import REHELLO_AFTER
from store.errors import ClientTimeout
from store.wire import fragments
from tests.unit.transport_rig import BLOB_SIZE, DAEMON, OSD_ID, Rig, blob_of


async def test_slow_requests_have_a_timeout_of_their_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests that take the daemon up to 0.2 s, each after a few answered at once (as a
    staged extent's commit follows its pieces), are sent again and again when timed with
    the quick ones, and hardly ever when timed apart."""
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=11, drop=0.0, duplicate=0.0, max_delay=0.0)
        rig.daemon.slow_apply = 0.0
        stats = rig.transport.stats

        async def increments(slow: bool) -> int:
            retransmits = 0
            for _ in range(20):
                for _ in range(5):
                    await rig.call({"op": "get", "key": "a"})
                before = stats.retransmits
                await rig.call({"op": "incr", "key": "a"}, slow=slow)
                retransmits += stats.retransmits - before
            return retransmits

        apart, together = await increments(True), await increments(False)
        nursery.cancel_scope.cancel()
    assert rig.daemon.counters["a"] == 40
    assert together >= 8
    assert apart <= 4


async def test_every_increment_applied_once_over_a_lossy_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    keys = [f"k{i}" for i in range(8)]
    plan = [keys[i % len(keys)] for i in range(240)]
    answers: dict[str, list[int]] = {key: [] for key in keys}
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=20240611)

        async def incr(key: str) -> None:
            answers[key].append(await rig.call({"op": "incr", "key": key}))

        async with trio.open_nursery() as clients:
            for key in plan:
                clients.start_soon(incr, key)
        got: dict[str, int] = {}

        async def get(key: str) -> None:
            got[key] = await rig.call({"op": "get", "key": key})

        async with trio.open_nursery() as clients:
            for key in keys:
                clients.start_soon(get, key)
        nursery.cancel_scope.cancel()

    wanted = Counter(plan)
    # Each request got its own answer: the values of one counter were handed out once each.
    for key in keys:
        assert sorted(answers[key]) == list(range(1, wanted[key] + 1)), key
    assert got == dict(wanted)
    assert rig.daemon.counters == wanted
    assert rig.daemon.applied == len(plan)
    stats = rig.transport.stats
    assert stats.requests == len(plan) + len(keys)
    assert stats.retransmits > 0
    assert stats.timeouts == 0
    # The network was as bad as claimed, and the daemon's duplicate handling was exercised.
    assert rig.network.dropped > 0.2 * rig.network.sent
    assert rig.network.duplicated > 0
    assert rig.daemon.served["incr_cached"] > 0
    assert rig.daemon.served["incr_in_progress"] > 0  # and the client waited on INPROGRESS
    assert rig.daemon.dropped["replay"] > 0  # duplicated datagrams met the window


async def read_blobs(rig: Rig, reads: int, keys: list[str], *, change: bool) -> list[Any]:
    """`reads` concurrent large reads of `keys` in turn (and, with `change`, ten increments
    of each key meanwhile, which change the version the reads meet)."""
    got: list[tuple[str, dict[Any, Any]]] = []

    async def read(key: str) -> None:
        reply, _ = await rig.transport.request(
            OSD_ID,
            DAEMON,
            {"op": "blob", "key": key},
            encrypt=True,
            deadline=trio.current_time() + 300,
            fragments=BLOB_SIZE + 1024,
        )
        got.append((key, reply))

    async def increments(key: str) -> None:
        for _ in range(10):
            await rig.call({"op": "incr", "key": key})

    async with trio.open_nursery() as clients:
        for i in range(reads):
            clients.start_soon(read, keys[i % len(keys)])
        if change:
            for key in keys:
                clients.start_soon(increments, key)
    assert len(got) == reads
    versions = []
    for key, reply in got:
        assert reply["r"] == 0
        version = (reply["v"][0], reply["v"][1])
        versions.append(version)
        assert reply["res"][0] == blob_of(key, version), (key, version)
    assert rig.transport.stats.timeouts == 0
    return versions


async def test_fragments_of_a_reply_are_kept_across_resends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Five fragments per reply over a network that drops 30 %: served once, a reply
    arrives whole only 0.7**5 = 17 % of the time, so without keeping the pieces of earlier
    servings a read would take six servings on average."""
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=77, drop=0.3, duplicate=0.1)
        await read_blobs(rig, 60, ["a", "b", "c"], change=False)
        nursery.cancel_scope.cancel()
    assert len(fragments.split(b"h", b"x" * BLOB_SIZE, (1, 1), rig.transport.max_datagram)) == 5
    assert 60 < rig.daemon.served["blob"] < 60 * 4
    assert rig.transport.stats.retransmits > 0


async def test_fragmented_replies_never_mix_two_versions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=78, drop=0.3, duplicate=0.1)
        versions = await read_blobs(rig, 60, ["a", "b", "c"], change=True)
        nursery.cancel_scope.cancel()
    # The reads met many versions of each key; each reply was whole and of one of them.
    assert len(set(versions)) > 4


async def test_a_fragment_for_a_request_that_asked_for_none_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=5, drop=0.0, duplicate=0.0, max_delay=0.0)
        with pytest.raises(ClientTimeout):
            # "frag" in the body makes the daemon send fragments, but the transport was not
            # told to take them (no `fragments=`): it must not piece together a reply.
            await rig.transport.request(
                OSD_ID,
                DAEMON,
                {"op": "blob", "key": "k", "frag": [BLOB_SIZE + 1024, 65000]},
                encrypt=True,
                deadline=trio.current_time() + 5,
            )
        nursery.cancel_scope.cancel()
    assert rig.transport.stats.dropped_by["unexpected"] > 0


async def test_request_to_a_silent_address_times_out_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=1)
        start = trio.current_time()
        deadline = start + 7.5
        with pytest.raises(ClientTimeout):
            await rig.transport.request(
                OSD_ID,
                ("10.0.0.99", 6800),
                {"op": "get", "key": "a"},
                encrypt=True,
                deadline=deadline,
            )
        ended = trio.current_time()
        nursery.cancel_scope.cancel()
    assert deadline <= ended < deadline + 0.01
    assert rig.transport.stats.timeouts == 1
    # It kept trying until the end, with backoff: more than one try, far fewer than 7.5 / 0.05.
    assert 2 <= rig.transport.stats.retransmits <= 12


async def test_request_to_a_daemon_that_stops_answering_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=2, drop=0.0, duplicate=0.0)
        assert await rig.call({"op": "incr", "key": "a"}) == 1
        await trio.sleep(1.0)  # let a late retransmission of that request land first
        rig.daemon.answer_requests = False
        retransmits = rig.transport.stats.retransmits
        deadline = trio.current_time() + 20.0
        with pytest.raises(ClientTimeout):
            await rig.transport.request(
                OSD_ID, DAEMON, {"op": "incr", "key": "a"}, encrypt=True, deadline=deadline
            )
        ended = trio.current_time()
        nursery.cancel_scope.cancel()
    assert deadline <= ended < deadline + 0.01
    assert rig.daemon.counters["a"] == 1
    # Every transmission of the request reached the daemon: the first and each retry.
    assert rig.daemon.dropped["ignored"] == rig.transport.stats.retransmits - retransmits + 1


async def test_client_says_hello_again_after_the_daemon_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=3)
        for expected in range(1, 6):
            assert await rig.call({"op": "incr", "key": "a"}) == expected
        link = rig.transport.links[(OSD_ID, DAEMON)]
        assert link.session is not None
        first_session = link.session.session_id
        hellos = rig.daemon.served["hello"]

        rig.daemon.restart()
        assert await rig.call({"op": "incr", "key": "a"}) == 6
        assert await rig.call({"op": "get", "key": "a"}) == 6
        nursery.cancel_scope.cancel()
    assert rig.transport.stats.resets >= 1
    assert rig.daemon.dropped["unknown_session"] >= 1
    assert rig.daemon.served["hello"] > hellos
    assert link.session is not None and link.session.session_id != first_session
    assert rig.daemon.counters["a"] == 6


async def test_requests_in_flight_during_a_restart_all_recover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Several requests are waiting on the same session when the daemon restarts: each of
    # them is answered RESET, and each must move to the new session rather than wait out
    # its deadline.
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=4, drop=0.0, duplicate=0.0)
        assert await rig.call({"op": "incr", "key": "a"}) == 1
        rig.daemon.answer_requests = False
        got: list[int] = []

        async def get() -> None:
            got.append(await rig.call({"op": "get", "key": "a"}, timeout=30.0))

        async with trio.open_nursery() as clients:
            for _ in range(10):
                clients.start_soon(get)
            await trio.sleep(1.0)  # all ten sent at least once, none answered
            rig.daemon.answer_requests = True
            rig.daemon.restart()
        nursery.cancel_scope.cancel()
    assert got == [1] * 10
    assert rig.transport.stats.timeouts == 0


async def test_client_starts_a_new_session_when_a_daemon_goes_silent_on_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The daemon restarted and no RESET reaches the client (here: none is sent, as when
    # our session id now names another client's session and our datagrams fail its MAC).
    async with trio.open_nursery() as nursery:
        rig = Rig(nursery, seed=5, drop=0.0, duplicate=0.0)
        assert await rig.call({"op": "incr", "key": "a"}) == 1
        hellos = rig.daemon.served["hello"]
        (link,) = rig.transport.links.values()
        assert link.session is not None
        old_session = link.session.session_id
        rig.daemon.restart()
        rig.daemon.reset_unknown = False
        start = trio.current_time()
        assert await rig.call({"op": "incr", "key": "a"}, timeout=120.0) == 2
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    assert rig.transport.stats.rehellos == 1
    # The old session is forgotten: a late reply to it is a stranger's, not a forgery
    # under the new session's keys.
    assert old_session not in rig.transport._by_session
    assert link.session is not None and link.session.session_id != old_session
    assert rig.daemon.served["hello"] == hellos + 1
    assert rig.daemon.dropped["unknown_session"] == REHELLO_AFTER
    assert took < 60.0  # long before the deadline
    assert rig.daemon.counters["a"] == 2


def test_rtt_estimator_backs_off_to_the_maximum_and_a_sample_resets_it() -> None:
    est = RttEstimator(initial=0.25, min_rto=0.05, max_rto=2.0)
    assert est.rto() == pytest.approx(0.25)
    seen = []
    for _ in range(6):
        est.timed_out()
        seen.append(est.rto())
    assert seen == pytest.approx([0.5, 1.0, 2.0, 2.0, 2.0, 2.0])

    est.sample(0.1)  # first sample: srtt 0.1, rttvar 0.05, rto = srtt + 4 * rttvar
    assert est.rto() == pytest.approx(0.3)
    est.timed_out()
    assert est.rto() == pytest.approx(0.6)
    est.sample(0.1)  # steady samples shrink the variance, and the backoff is gone
    assert est.rto() == pytest.approx(0.1 + 4 * 0.0375)

    for _ in range(50):
        est.sample(0.0001)
    assert est.rto() == pytest.approx(0.05)  # never below the minimum
