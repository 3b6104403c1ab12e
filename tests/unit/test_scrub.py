"""Scrub's core: judging copies, the wire form of scrub maps, the schedule."""

from __future__ import annotations

import random
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store.osd.ops import InvalidRequest
from store.osd.scrub import (
    MAX_PAGE_OBJECTS,
    CopyProblem,
    ScrubEntry,
    ScrubError,
    ScrubPage,
    ScrubSchedule,
    ScrubStamps,
    ScrubTally,
    Verdict,
    batches_by_size,
    changed_between,
    compare_maps,
    compare_object,
    entry_from_wire_untrusted,
    merge_known_errors,
    parse_scrub_map_args_untrusted,
    retry_delay,
    scheduler_tick,
)

V = (3, 7)
GOOD = ScrubEntry(True, V, size=10, attrs=1, omap=2, data=3)
ORDER = [0, 1, 2]
HEADS = {0: V, 1: V, 2: V}


def judge(
    copies: Mapping[int, ScrubEntry | None],
    order: list[int] = ORDER,
    heads: Mapping[int, tuple[int, int]] = HEADS,
) -> Verdict | None:
    return compare_object("obj", copies, order, heads)


def bad_osds(verdict: Verdict | None) -> list[int]:
    assert verdict is not None
    return [p.osd for p in verdict.bad]


# --- judging one object ----------------------------------------------------------------


def test_identical_copies_are_consistent() -> None:
    assert judge({0: GOOD, 1: GOOD, 2: GOOD}) is None


def test_a_copy_with_a_read_error_is_bad_and_another_is_authoritative() -> None:
    damaged = ScrubEntry(True, V, size=10, attrs=1, omap=2, error="checksum mismatch")
    verdict = judge({0: damaged, 1: GOOD, 2: GOOD})
    assert verdict is not None
    assert verdict.authoritative == 1 and verdict.version == V
    assert verdict.bad == (CopyProblem(0, "read error: checksum mismatch", deep_only=True),)


def test_the_majority_content_wins_over_the_primary() -> None:
    odd = ScrubEntry(True, V, size=10, attrs=1, omap=2, data=99)
    verdict = judge({0: odd, 1: GOOD, 2: GOOD})
    assert verdict is not None and verdict.authoritative == 1
    assert verdict.bad == (CopyProblem(0, "data differs", deep_only=True),)


def test_a_tie_goes_to_the_primary() -> None:
    odd = ScrubEntry(True, V, size=10, attrs=1, omap=2, data=99)
    verdict = judge({0: GOOD, 1: odd}, order=[0, 1])
    assert verdict is not None and verdict.authoritative == 0 and bad_osds(verdict) == [1]
    verdict = judge({0: odd, 1: GOOD}, order=[0, 1])
    assert verdict is not None and verdict.authoritative == 0 and bad_osds(verdict) == [1]


def test_a_tie_without_the_primary_goes_to_the_first_in_acting_order() -> None:
    damaged = ScrubEntry(True, V, size=10, error="checksum mismatch")
    odd = ScrubEntry(True, V, size=10, attrs=1, omap=2, data=99)
    verdict = judge({0: damaged, 1: odd, 2: GOOD})
    assert verdict is not None and verdict.authoritative == 1
    assert bad_osds(verdict) == [0, 2]


def test_the_newest_version_wins() -> None:
    old = ScrubEntry(True, (3, 5), size=4)
    verdict = judge({0: old, 1: GOOD, 2: old})
    assert verdict is not None and verdict.authoritative == 1 and verdict.version == V
    assert verdict.bad == (
        CopyProblem(0, "stale version 3'5, authoritative 3'7"),
        CopyProblem(2, "stale version 3'5, authoritative 3'7"),
    )


def test_a_missing_copy_is_an_inconsistency_where_the_member_should_have_it() -> None:
    verdict = judge({0: GOOD, 1: None, 2: GOOD})
    assert verdict is not None and verdict.authoritative == 0
    assert verdict.bad == (CopyProblem(1, "missing (authoritative 3'7)"),)
    # The primary itself may be the one without it.
    verdict = judge({1: GOOD, 2: GOOD})
    assert verdict is not None and verdict.authoritative == 1 and bad_osds(verdict) == [0]


def test_a_member_still_catching_up_is_not_inconsistent() -> None:
    heads = {0: V, 1: (3, 6), 2: V}
    assert judge({0: GOOD, 1: None, 2: GOOD}, heads=heads) is None
    assert judge({0: GOOD, 1: ScrubEntry(True, (3, 2), size=1), 2: GOOD}, heads=heads) is None


def test_a_tombstone_makes_older_live_copies_stale() -> None:
    tomb = ScrubEntry(False, V)
    old = ScrubEntry(True, (3, 5), size=4)
    verdict = judge({0: tomb, 1: old, 2: None})
    assert verdict is not None and verdict.authoritative == 0
    assert verdict.bad == (CopyProblem(1, "stale version 3'5: deleted at 3'7"),)
    # Tombstones and nothing at all agree: the object is gone everywhere.
    assert judge({0: tomb, 1: None, 2: ScrubEntry(False, (2, 1))}) is None


def test_every_copy_of_the_newest_version_damaged_has_no_good_copy() -> None:
    damaged = ScrubEntry(True, V, size=10, error="checksum mismatch")
    older = ScrubEntry(True, (3, 1), size=10, attrs=1, omap=2, data=3)
    verdict = judge({0: damaged, 1: damaged, 2: older})
    assert verdict is not None and not verdict.repairable
    assert verdict.authoritative is None
    assert bad_osds(verdict) == [0, 1, 2]  # the older copy is stale, never authoritative


def test_differences_are_named() -> None:
    other = ScrubEntry(True, V, size=11, attrs=5, omap=6, data=7)
    verdict = judge({0: GOOD, 1: GOOD, 2: other})
    assert verdict is not None
    assert verdict.bad == (
        CopyProblem(2, "size 11, authoritative 10; attributes differ; omap differs; data differs"),
    )
    assert not verdict.bad[0].deep_only
    deleted_here = judge({0: GOOD, 1: GOOD, 2: ScrubEntry(False, V)})
    assert deleted_here is not None and deleted_here.bad == (CopyProblem(2, "deleted here"),)


def test_a_light_scrub_compares_what_it_has() -> None:
    light = ScrubEntry(True, V, size=10, attrs=1)
    assert judge({0: light, 1: light, 2: light}) is None
    verdict = judge({0: light, 1: light, 2: ScrubEntry(True, V, size=10, attrs=2)})
    assert verdict is not None and verdict.bad == (CopyProblem(2, "attributes differ"),)


def test_compare_maps_judges_the_union_of_names_in_order() -> None:
    maps = {
        0: {"a": GOOD, "b": GOOD, "c": GOOD},
        1: {"a": GOOD, "c": GOOD, "d": GOOD},
    }
    verdicts = compare_maps(maps, [0, 1], {0: V, 1: V})
    assert [(v.name, bad_osds(v)) for v in verdicts] == [("b", [1]), ("d", [0])]
    assert [v.name for v in compare_maps(maps, [0, 1], {0: V, 1: V}, names=["d"])] == ["d"]


# --- properties --------------------------------------------------------------------------

versions = st.tuples(st.integers(1, 3), st.integers(1, 4))
entries = st.one_of(
    st.none(),
    st.builds(
        ScrubEntry,
        exists=st.booleans(),
        version=versions,
        size=st.integers(0, 2),
        attrs=st.integers(0, 1),
        omap=st.integers(0, 1),
        data=st.integers(0, 1),
        error=st.sampled_from([None, None, None, "checksum mismatch"]),
    ),
)


@st.composite
def scrub_cases(
    draw: st.DrawFn,
) -> tuple[dict[int, ScrubEntry | None], list[int], dict[int, tuple[int, int]]]:
    order = list(draw(st.permutations([0, 1, 2, 3]))[: draw(st.integers(1, 4))])
    copies = {m: draw(entries) for m in order}
    heads = {m: draw(st.sampled_from([(9, 9), (1, 1)])) for m in order}
    return copies, order, heads


@settings(max_examples=400, deadline=None)
@given(scrub_cases())
def test_verdicts_follow_the_rules(
    case: tuple[dict[int, ScrubEntry | None], list[int], dict[int, tuple[int, int]]],
) -> None:
    copies, order, heads = case
    verdict = compare_object("obj", copies, order, heads)
    present = {m: e for m, e in copies.items() if e is not None}
    if verdict is None:
        # Consistent: no damaged copy, and every member with the full history agrees.
        assert all(e.error is None for e in present.values())
        return
    bad = {p.osd for p in verdict.bad}
    assert len(bad) == len(verdict.bad)  # one problem per member
    newest = max(e.version for e in present.values())
    assert verdict.version == newest
    for member, entry in present.items():
        if entry.error is not None:
            assert member in bad  # a damaged copy is always bad
    if verdict.authoritative is not None:
        auth = copies[verdict.authoritative]
        assert auth is not None and auth.error is None and auth.version == newest
        assert verdict.authoritative not in bad
        # Copies of the newest version with the same content are never bad.
        for member, entry in present.items():
            if entry == auth:
                assert member not in bad
        # The winning content is held by at least as many good copies as any other.
        candidates = [
            content(e) for e in present.values() if e.error is None and e.version == newest
        ]
        for other in candidates:
            assert candidates.count(other) <= candidates.count(content(auth))
    else:
        assert all(e.error is not None for e in present.values() if e.version == newest)
    for member in bad:
        copy = copies.get(member)
        if copy is None or copy.error is None:
            # Only members with the whole history are blamed for lacking the newest copy.
            assert heads[member] >= newest or (copy is not None and copy.version == newest)


def content(entry: ScrubEntry) -> tuple[object, ...]:
    """What two copies of one version must agree on (a tombstone has no content)."""
    if not entry.exists:
        return (False,)
    return (True, entry.size, entry.attrs, entry.omap, entry.data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.builds(ScrubEntry, exists=st.just(True), version=versions, data=st.integers(0, 2))),
)
def test_identical_maps_on_every_member_are_consistent(copies: list[ScrubEntry]) -> None:
    names = {f"obj{i}": entry for i, entry in enumerate(copies)}
    maps = {m: names for m in ORDER}
    assert compare_maps(maps, ORDER, {m: (9, 9) for m in ORDER}) == []


@settings(max_examples=200, deadline=None)
@given(st.permutations([1, 2, 3, 4]), st.integers(0, 4))
def test_a_strict_majority_wins_whatever_the_order(replicas: list[int], odd_one: int) -> None:
    order = [0, *replicas]
    odd = ScrubEntry(True, V, size=10, attrs=1, omap=2, data=99)
    copies = {m: (odd if m == odd_one else GOOD) for m in order}
    verdict = compare_object("obj", copies, order, {m: V for m in order})
    assert verdict is not None and bad_osds(verdict) == [odd_one]
    assert copies[verdict.authoritative or 0] == GOOD


# --- wire forms ---------------------------------------------------------------------------


def test_entries_and_pages_round_trip() -> None:
    page = ScrubPage(
        [("a", GOOD), ("b", ScrubEntry(False, (1, 2))), ("c", ScrubEntry(True, V, error="bad"))],
        "c",
        (4, 9),
    )
    assert ScrubPage.from_wire_untrusted(page.to_wire()) == page
    assert entry_from_wire_untrusted(GOOD.to_wire("x")) == ("x", GOOD)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        ["a", True, 1, [1, 1], 0, None, None],  # too short
        ["", True, 1, [1, 1], 0, None, None, None],  # empty name
        ["a", 1, 1, [1, 1], 0, None, None, None],  # exists not a bool
        ["a", True, -1, [1, 1], 0, None, None, None],
        ["a", True, 1 << 40, [1, 1], 0, None, None, None],
        ["a", True, 1, [1], 0, None, None, None],
        ["a", True, 1, [1, 1], -1, None, None, None],
        ["a", True, 1, [1, 1], 0, 1 << 64, None, None],
        ["a", True, 1, [1, 1], 0, None, "digest", None],
        ["a", True, 1, [1, 1], 0, None, None, "x" * 10000],
        ["a", True, 1, [1, 1], 0, None, None, 5],
    ],
)
def test_a_malformed_entry_is_refused(raw: object) -> None:
    with pytest.raises(InvalidRequest):
        entry_from_wire_untrusted(raw)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {"objects": [], "next": None},
        {"objects": "x", "next": None, "v": [1, 1]},
        {"objects": [], "next": 5, "v": [1, 1]},
        {"objects": [], "next": None, "v": "x"},
        {"objects": [GOOD.to_wire("b"), GOOD.to_wire("a")], "next": None, "v": [1, 1]},
        {"objects": [GOOD.to_wire("a"), GOOD.to_wire("a")], "next": None, "v": [1, 1]},
        {"objects": [GOOD.to_wire("a")] * (MAX_PAGE_OBJECTS + 1), "next": None, "v": [1, 1]},
    ],
)
def test_a_malformed_page_is_refused(raw: object) -> None:
    with pytest.raises(InvalidRequest):
        ScrubPage.from_wire_untrusted(raw)


def test_scrub_map_arguments_are_checked() -> None:
    assert parse_scrub_map_args_untrusted({"pool": 1, "pg": 0}) == {
        "deep": False,
        "names": None,
        "limit": 256,
        "after": None,
        "upto": None,
    }
    parsed = parse_scrub_map_args_untrusted({"deep": True, "after": "a", "upto": "b", "limit": 5})
    assert parsed == {"deep": True, "names": None, "limit": 5, "after": "a", "upto": "b"}
    assert parse_scrub_map_args_untrusted({"names": ["x", "y"]})["names"] == ["x", "y"]
    for bad in (
        {"deep": 1},
        {"limit": 0},
        {"limit": MAX_PAGE_OBJECTS + 1},
        {"limit": "5"},
        {"after": 5},
        {"upto": ""},
        {"names": "x"},
        {"names": [1]},
        {"names": ["x"] * (MAX_PAGE_OBJECTS + 1)},
    ):
        with pytest.raises(InvalidRequest):
            parse_scrub_map_args_untrusted(bad)


# --- helpers of the shell -------------------------------------------------------------------


def test_changed_between_looks_at_presence_and_version() -> None:
    assert not changed_between(None, None)
    assert not changed_between(GOOD, ScrubEntry(True, V, size=99))  # content may be repaired
    assert changed_between(GOOD, None) and changed_between(None, GOOD)
    assert changed_between(GOOD, ScrubEntry(True, (3, 8)))
    assert changed_between(GOOD, ScrubEntry(False, V))


def test_batches_by_size_bounds_bytes_and_names() -> None:
    sizes = {"a": 5, "b": 5, "c": 20, "d": 1, "e": 1, "f": 1}
    names = list(sizes)
    assert batches_by_size(names, sizes, 10, 100) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert batches_by_size(names, sizes, 1000, 4) == [["a", "b", "c", "d"], ["e", "f"]]
    assert batches_by_size([], sizes, 10, 10) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50)), st.integers(1, 60), st.integers(1, 5))
def test_batches_keep_every_name_once_in_order(sizes: list[int], budget: int, limit: int) -> None:
    names = [f"n{i}" for i in range(len(sizes))]
    batches = batches_by_size(names, dict(zip(names, sizes, strict=True)), budget, limit)
    assert [n for b in batches for n in b] == names
    for batch in batches:
        assert 1 <= len(batch) <= limit
        assert len(batch) == 1 or sum(sizes[names.index(n)] for n in batch) <= budget


def test_known_errors_after_light_and_deep_scrubs() -> None:
    data = ScrubError("a", 1, "data differs", deep=True)
    missing = ScrubError("b", 2, "missing", deep=False)
    # A light scrub cannot see data damage: that error stays; what it sees it replaces.
    assert merge_known_errors([data, missing], [], deep=False) == [data]
    again = ScrubError("b", 2, "missing (authoritative 1'1)", deep=False)
    assert merge_known_errors([data, missing], [again], deep=False) == [again, data]
    # A deep scrub sees everything: its findings are the whole truth.
    assert merge_known_errors([data, missing], [], deep=True) == []


def test_the_tally_counts_repairs_and_leaves_the_rest() -> None:
    tally = ScrubTally("1.a", deep=True, skipped=[4])
    tally.objects = 7
    verdict = Verdict("obj", V, 0, (CopyProblem(1, "data differs", True), CopyProblem(2, "x")))
    tally.judged(verdict, repaired={1})
    assert tally.left == [ScrubError("obj", 2, "x", deep=False)]
    assert tally.report() == {
        "pg": "1.a",
        "deep": True,
        "objects": 7,
        "errors": [
            {"object": "obj", "osd": 1, "problem": "data differs"},
            {"object": "obj", "osd": 2, "problem": "x"},
        ],
        "errors_total": 2,
        "repaired": 1,
        "unrepaired": 1,
        "changed": 0,
        "skipped_osds": [4],
    }


# --- the schedule ---------------------------------------------------------------------------

NEVER = ScrubStamps(0.0, 0.0)


def test_never_scrubbed_pgs_are_spread_over_one_interval() -> None:
    schedule = ScrubSchedule(rng=random.Random(7))
    pgs = {(1, pg): NEVER for pg in range(200)}
    now = 1000.0
    due_at: dict[tuple[int, int], int] = {}
    # The first look fixes when each PG falls due; later looks keep it.
    for t in range(0, 101):
        for key in pgs:
            if key not in due_at and schedule.due(key, NEVER, now + t, 100.0, 0.0) is not None:
                due_at[key] = t
    assert len(due_at) == len(pgs)  # all within one interval
    assert len(set(due_at.values())) > 30  # and not at once
    assert sum(1 for t in due_at.values() if t <= 10) < 60


def test_a_scrubbed_pg_is_due_an_interval_after_its_last_scrub() -> None:
    schedule = ScrubSchedule()
    stamps = ScrubStamps(last_scrub=1000.0, last_deep_scrub=0.0)
    assert schedule.due((1, 0), stamps, 1099.0, 100.0, 0.0) is None
    assert schedule.due((1, 0), stamps, 1100.0, 100.0, 0.0) == (1.0, False)
    # A deep scrub counts as a scrub.
    deep = ScrubStamps(last_scrub=0.0, last_deep_scrub=1050.0)
    assert schedule.due((1, 0), deep, 1100.0, 100.0, 0.0) is None


def test_zero_intervals_schedule_nothing() -> None:
    schedule = ScrubSchedule()
    old = ScrubStamps(1.0, 1.0)
    assert schedule.pick({(1, 0): old, (1, 1): NEVER}, 1e9, 0.0, 0.0) is None


def test_pick_prefers_deep_then_the_most_overdue() -> None:
    schedule = ScrubSchedule()
    now = 10_000.0
    pgs = {
        (1, 0): ScrubStamps(now - 150, now - 150),  # 1.5 light intervals overdue
        (1, 1): ScrubStamps(now - 300, now - 300),  # 3 intervals overdue
        (1, 2): ScrubStamps(now - 10, now - 2000),  # deep due
    }
    assert schedule.pick(pgs, now, 100.0, 1000.0) == ((1, 2), True)
    del pgs[(1, 2)]
    assert schedule.pick(pgs, now, 100.0, 1000.0) == ((1, 1), False)
    assert schedule.pick(pgs, now, 100.0, 0.0) == ((1, 1), False)


def test_a_postponed_pg_waits() -> None:
    schedule = ScrubSchedule()
    pgs = {(1, 0): ScrubStamps(1.0, 1.0)}
    schedule.postpone((1, 0), 500.0)
    assert schedule.pick(pgs, 400.0, 10.0, 0.0) is None
    assert schedule.pick(pgs, 500.0, 10.0, 0.0) == ((1, 0), False)


def test_the_scheduler_looks_often_enough_for_short_intervals() -> None:
    assert scheduler_tick(0.0, 0.0) == 5.0
    assert scheduler_tick(86400.0, 604800.0) == 5.0
    assert scheduler_tick(2.0, 0.0) == 0.5
    assert scheduler_tick(0.0, 0.1) == 0.2


def test_a_failed_scheduled_scrub_is_retried_within_its_interval() -> None:
    assert retry_delay(86400.0, 0.0) == 60.0
    assert retry_delay(0.0, 5.0) == 5.0
    assert retry_delay(0.2, 0.0) == 1.0
