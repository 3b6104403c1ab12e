"""Failure reports: how many voices take a daemon down, and how reports lapse."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from store.master.failures import FailureTracker
from store.osd.heartbeat import PeerWatch

UP = {0, 1, 2, 3}


def test_one_reporter_is_not_enough_two_are() -> None:
    t = FailureTracker(min_reporters=2)
    t.report(3, 0, now=0.0, ttl=10.0)
    assert t.to_mark_down(1.0, UP) == {}
    assert t.reported(3, 1.0, UP)
    t.report(3, 1, now=1.0, ttl=10.0)
    assert t.to_mark_down(2.0, UP) == {3: [0, 1]}


def test_a_daemon_cannot_report_itself() -> None:
    t = FailureTracker(min_reporters=1)
    t.report(2, 2, now=0.0, ttl=10.0)
    assert t.to_mark_down(0.0, UP) == {}


def test_with_fewer_daemons_than_reporters_wanted_every_other_one_suffices() -> None:
    t = FailureTracker(min_reporters=3)
    t.report(1, 0, now=0.0, ttl=10.0)
    assert t.to_mark_down(0.0, {0, 1}) == {1: [0]}  # a two-daemon cluster: one voice
    t.report(2, 0, now=0.0, ttl=10.0)
    # Target 1 among three: two others could report, one did: not enough.
    assert t.to_mark_down(0.0, {0, 1, 2}) == {}


def test_reports_lapse_unless_repeated_and_can_be_withdrawn() -> None:
    t = FailureTracker(min_reporters=2)
    t.report(3, 0, now=0.0, ttl=5.0)
    t.report(3, 1, now=4.0, ttl=5.0)
    assert t.to_mark_down(6.0, UP) == {}  # 0's report lapsed at 5
    t.report(3, 0, now=6.0, ttl=5.0)
    assert t.to_mark_down(7.0, UP) == {3: [0, 1]}
    t.withdraw(3, 0)
    assert t.to_mark_down(7.0, UP) == {}
    assert t.reporters(3, 7.0, UP) == [1]


def test_reports_by_down_daemons_and_on_down_daemons_do_not_count() -> None:
    t = FailureTracker(min_reporters=2)
    t.report(3, 0, now=0.0, ttl=10.0)
    t.report(3, 1, now=0.0, ttl=10.0)
    assert t.to_mark_down(0.0, {1, 2, 3}) == {}  # osd.0 is down: one voice left
    assert t.to_mark_down(0.0, {0, 1, 2}) == {}  # the target is down already


def test_forget_drops_reports_about_and_by_a_daemon() -> None:
    t = FailureTracker(min_reporters=1)
    t.report(3, 0, now=0.0, ttl=10.0)
    t.report(1, 3, now=0.0, ttl=10.0)
    t.forget(3)
    assert t.to_mark_down(0.0, UP) == {}


@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 4), st.floats(0, 100), st.booleans()),
        max_size=40,
    ),
    st.integers(1, 4),
)
def test_decisions_always_have_enough_standing_reporters(
    events: list[tuple[int, int, float, bool]], min_reporters: int
) -> None:
    t = FailureTracker(min_reporters=min_reporters)
    up = {0, 1, 2, 3, 4}
    now = 0.0
    for target, reporter, dt, withdraw in events:
        now += dt
        if withdraw:
            t.withdraw(target, reporter)
        else:
            t.report(target, reporter, now, ttl=10.0)
        for down, reporters in t.to_mark_down(now, up).items():
            assert down not in reporters
            assert len(set(reporters)) >= min(min_reporters, len(up) - 1)


def test_peer_watch_reports_after_the_grace_and_withdraws_on_answer() -> None:
    w = PeerWatch(grace=2.0)
    assert w.set_peers({1, 2}, now=0.0) == []
    w.answered(1, 1.5)
    assert w.silent(2.5) == {2: 2.5}  # 1 answered within its grace, 2 never did
    assert w.reported == {2}
    assert w.answered(2, 3.0) is True  # report to withdraw
    assert w.answered(2, 3.1) is False
    assert w.silent(3.2) == {}
    assert w.silent(3.75) == {1: 2.25}


def test_peer_watch_new_peers_get_a_full_grace_and_dropped_reported_peers_are_withdrawn() -> None:
    w = PeerWatch(grace=2.0)
    w.set_peers({1}, now=0.0)
    assert w.silent(3.0) == {1: 3.0}
    assert w.set_peers({2}, now=3.0) == [1]  # no longer shared: withdraw the report on 1
    assert w.silent(4.0) == {}
    assert w.silent(5.5) == {2: 2.5}
