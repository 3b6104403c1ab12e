"""The object store's versions, PG log, replica apply, recovery and listing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from store.errors import Code
from store.osd.objectstore import LogEntry, ObjectStore, PgInfo
from store.osd.ops import (
    Create,
    Delete,
    InvalidRequest,
    OmapSet,
    Read,
    SetXattr,
    Stat,
    Truncate,
    Write,
    WriteFull,
)
from store.osd.pglog import entries_from_wire
from store.osd.txns import (
    ObjectState,
    ObjectStateTxn,
    PgRemoveTxn,
    PgResetLogTxn,
    PrimaryTxn,
    ReplicaTxn,
)
from tests.unit.objectstore_support import (
    BS,
    POOL,
    ok,
    primary,
    read_all,
    replica,
)

# --- versions, the PG log, replicas ----------------------------------------------------


def test_versions_and_log_entries_in_order(store: ObjectStore) -> None:
    ok(primary(store, "a", Write(0, b"1"), epoch=3, reqid="q1"))
    ok(primary(store, "b", Write(0, b"2"), epoch=4, reqid="q2"))
    ok(primary(store, "a", Delete(), epoch=4, reqid="q3"))
    ok(primary(store, "a", Write(0, b"x"), epoch=2, pg=5, reqid="q4"))
    assert ok(primary(store, "b", Read(0, 1), epoch=9)).version == (4, 2)  # reads log nothing
    # A primary with an older map still cannot make versions go back.
    assert ok(primary(store, "b", Truncate(0), epoch=3, reqid="q5")).version == (4, 4)
    assert store.pg_log_since(POOL, 0, 0) == [
        LogEntry((3, 1), "a", "modify", "q1"),
        LogEntry((4, 2), "b", "modify", "q2"),
        LogEntry((4, 3), "a", "delete", "q3"),
        LogEntry((4, 4), "b", "modify", "q5"),
    ]
    assert store.pg_log_since(POOL, 0, 3) == [LogEntry((4, 4), "b", "modify", "q5")]
    assert store.pg_log_since(POOL, 5, 0) == [LogEntry((2, 1), "a", "modify", "q4")]
    assert store.pg_info(POOL, 0) == PgInfo((4, 4), 0)
    assert store.pg_info(POOL, 99) == PgInfo((0, 0), 0)
    assert store.pgs() == [(POOL, 0), (POOL, 5)]


def test_a_retransmitted_request_is_answered_not_applied(store: ObjectStore) -> None:
    ok(primary(store, "obj", Create(True), Write(0, b"x"), epoch=2, reqid="c:1"))
    again = primary(store, "obj", Create(True), Write(0, b"x"), epoch=3, reqid="c:1")
    assert again.code == Code.OK and again.version == (2, 1)
    assert again.results == [None, None]
    assert store.pg_info(POOL, 0).last_version == (2, 1)
    assert primary(store, "obj", Create(True), reqid="c:1", pg=1).code == Code.EEXIST


def test_replica_applies_in_order(store: ObjectStore) -> None:
    assert ok(replica(store, "obj", (2, 1), Write(0, b"abc"), Read(0, 3))).results == [None, None]
    ok(replica(store, "obj", (2, 2), Create(True), Write(3, b"d")))  # exclusive: already judged
    assert read_all(store, "obj") == b"abcd"
    assert ok(store.execute_read(POOL, "obj", [Stat()])).version == (2, 2)
    assert store.pg_info(POOL, 0).last_version == (2, 2)
    duplicate = ok(replica(store, "obj", (2, 1), WriteFull(b"old")))
    assert duplicate.message == "already applied"
    assert read_all(store, "obj") == b"abcd"
    gap = replica(store, "obj", (2, 4), WriteFull(b"future"))
    assert gap.code == Code.EAGAIN and "gap" in gap.message
    assert read_all(store, "obj") == b"abcd"
    ok(replica(store, "gone", (2, 3), Delete()))  # deleting an absent object is fine
    assert [e.kind for e in store.pg_log_since(POOL, 0, 0) or []] == ["modify"] * 2 + ["delete"]


def test_replica_skips_operations_older_than_a_recovered_state(store: ObjectStore) -> None:
    tombstone = ObjectState("obj", False, (3, 5), 0, 1.0)
    ok(store.apply_batch([ObjectStateTxn(POOL, 0, tombstone)])[0])
    ok(replica(store, "obj", (1, 1), Write(0, b"late")))
    assert store.stat(POOL, "obj") is None  # the delete wins
    assert store.pg_info(POOL, 0).last_version == (1, 1)
    assert store.pg_log_since(POOL, 0, 0) == [LogEntry((1, 1), "obj", "modify", "r")]
    live = ObjectState("obj2", True, (3, 6), 3, 2.0, {}, {}, b"new")
    ok(store.apply_batch([ObjectStateTxn(POOL, 0, live)])[0])
    ok(replica(store, "obj2", (1, 2), Delete()))
    assert read_all(store, "obj2") == b"new"
    ok(replica(store, "obj2", (4, 3), Write(3, b"!")))  # newer than the state: applied
    assert read_all(store, "obj2") == b"new!"


def test_recovery_installs_only_newer_states(store: ObjectStore) -> None:
    ok(primary(store, "obj", Write(0, b"mine"), SetXattr("a", b"1"), epoch=5))
    older = ObjectState("obj", True, (4, 9), 5, 1.0, {}, {}, b"older")
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, older)])
    assert result.results == [False] and result.version == (5, 1)
    assert read_all(store, "obj") == b"mine"
    newer = ObjectState("obj", True, (6, 2), 9000, 42.0, {"b": b"2"}, {"k": b"v"}, b"n" * 9000)
    [result] = store.apply_batch([ObjectStateTxn(POOL, 0, newer)])
    assert result.results == [True]
    assert store.object_state(POOL, "obj") == newer
    gone = ObjectState("obj", False, (6, 3), 0, 43.0)
    store.apply_batch([ObjectStateTxn(POOL, 0, gone)])
    assert store.stat(POOL, "obj") is None
    assert store.object_state(POOL, "obj") == gone
    assert store.object_state(POOL, "never") == ObjectState("never", False, (0, 0), 0, 0.0)


def test_object_state_wire_form(store: ObjectStore) -> None:
    state = ObjectState("o", True, (1, 2), 3, 4.5, {"x": b"1"}, {"k": b""}, b"abc")
    assert ObjectState.from_wire(state.to_wire()) == state
    bad_changes: list[dict[str, object]] = [
        {"size": 4},
        {"data": "abc"},
        {"exists": 1},
        {"version": [1]},
        {"mtime": float("nan")},
        {"name": ""},
        {"xattrs": {"": b""}},
        {"omap": {"k": 1}},
        {"exists": False},  # an absent object with content
        {"extra": 1},
    ]
    for change in bad_changes:
        with pytest.raises(InvalidRequest):
            ObjectState.from_wire(state.to_wire() | change)
    with pytest.raises(InvalidRequest):
        ObjectState.from_wire(["o"])


def test_reset_log_after_recovery(store: ObjectStore) -> None:
    for i in range(3):
        ok(primary(store, "obj", Write(i, b"x")))
    store.apply_batch([PgResetLogTxn(POOL, 0, (7, 40))])
    assert store.pg_info(POOL, 0) == PgInfo((7, 40), 40)
    assert store.pg_log_since(POOL, 0, 3) is None
    assert store.pg_log_since(POOL, 0, 40) == []
    assert replica(store, "obj", (7, 40), Write(0, b"y")).message == "already applied"
    assert ok(primary(store, "obj", Write(0, b"z"), epoch=7)).version == (7, 41)
    assert [e.version for e in store.pg_log_since(POOL, 0, 40) or []] == [(7, 41)]


def test_a_log_adopted_with_copied_state_still_recognises_its_requests(
    store: ObjectStore,
) -> None:
    # State copied from a peer whose log says seqs 38..40 were requests c.1:8..c.1:10.
    adopted = [LogEntry((7, s), "obj", "modify", f"c.1:{s - 30}") for s in (38, 39, 40)]
    state = ObjectState("obj", True, (7, 40), 1, 1.0, data=b"p")
    store.apply_batch([ObjectStateTxn(POOL, 0, state), PgResetLogTxn(POOL, 0, (7, 40), adopted)])
    assert store.pg_info(POOL, 0) == PgInfo((7, 40), 37)
    assert store.pg_log_since(POOL, 0, 37) == adopted
    # A client retransmits c.1:9 to us, now its primary: answered, not applied again.
    result = store.apply_batch(
        [PrimaryTxn(POOL, 0, "obj", [Write(0, b"again")], None, 8, "c.1:9")]
    )[0]
    assert (result.code, result.version, result.message) == (Code.OK, (7, 39), "already applied")
    assert read_all(store, "obj") == b"p"
    # A replica in the same position can tell a repeat from a different write at a seq.
    assert replica(store, "obj", (7, 40), Write(0, b"y"), reqid="c.1:10").message == (
        "already applied"
    )
    assert replica(store, "obj", (7, 40), Write(0, b"y"), reqid="other").code == Code.EAGAIN


def test_a_log_that_does_not_end_at_the_version_is_not_adopted(store: ObjectStore) -> None:
    stale = [LogEntry((7, s), "obj", "modify", f"r{s}") for s in (38, 39)]
    store.apply_batch([PgResetLogTxn(POOL, 0, (7, 40), stale)])
    assert store.pg_info(POOL, 0) == PgInfo((7, 40), 40)
    longer = [LogEntry((7, s), "obj", "modify", f"r{s}") for s in (39, 40, 41)]
    store.apply_batch([PgResetLogTxn(POOL, 1, (7, 40), longer)])
    assert store.pg_info(POOL, 1) == PgInfo((7, 40), 38)  # entries past it are cut off
    assert [e.version for e in store.pg_log_since(POOL, 1, 38) or []] == [(7, 39), (7, 40)]


@pytest.mark.parametrize(
    "raw",
    [
        "x",
        [[1, 2, "o", "modify"]],
        [[1, 2, "o", "rename", None]],
        [[1, 2, "o", "modify", 5]],
        [[1, 2, "", "modify", None]],
        [[1, 2, "o", "modify", None], [1, 4, "o", "modify", None]],
        [[-1, 2, "o", "modify", None]],
    ],
)
def test_log_entries_from_a_peer_are_checked(raw: object) -> None:
    with pytest.raises(InvalidRequest):
        entries_from_wire(raw)
    good = [LogEntry((1, 2), "o", "delete", None), LogEntry((1, 3), "o", "modify", "r")]
    assert entries_from_wire([e.to_wire() for e in good]) == good


def test_log_is_trimmed_and_takes_old_tombstones_along(tmp_path: Path) -> None:
    store = ObjectStore(str(tmp_path), max_log_entries=3)
    ok(primary(store, "doomed", Write(0, b"x")))  # seq 1
    ok(primary(store, "doomed", Delete()))  # seq 2: a tombstone
    assert store.object_state(POOL, "doomed").version == (1, 2)
    for i in range(2):
        ok(primary(store, f"o{i}", Write(0, b"x")))  # seqs 3, 4
    assert store.pg_info(POOL, 0) == PgInfo((1, 4), 1)
    assert store.object_state(POOL, "doomed").version == (1, 2)  # its delete is still logged
    ok(primary(store, "o0", Write(0, b"y")))  # seq 5
    assert store.pg_info(POOL, 0) == PgInfo((1, 5), 2)
    assert store.pg_log_since(POOL, 0, 1) is None
    assert [e.version[1] for e in store.pg_log_since(POOL, 0, 2) or []] == [3, 4, 5]
    assert store.object_state(POOL, "doomed").version == (0, 0)  # the tombstone went
    assert store.object_state(POOL, "o0").version == (1, 5)
    store.close()


# --- listing, usage, removal -----------------------------------------------------------


def test_list_pg_pages_through_live_objects(store: ObjectStore) -> None:
    names = [f"obj-{i:02d}" for i in range(25)]
    batch = [PrimaryTxn(POOL, 2, n, [Write(0, n.encode())], None, 1, n) for n in names]
    batch.append(PrimaryTxn(POOL, 3, "elsewhere", [Create(False)], None, 1, "e"))
    batch.append(PrimaryTxn(POOL, 2, "obj-07", [Delete()], None, 1, "d"))
    assert all(r.code == Code.OK for r in store.apply_batch(batch))
    seen: list[tuple[str, int, tuple[int, int]]] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = store.list_pg(POOL, 2, cursor, 10)
        seen += page
        pages += 1
        if cursor is None:
            break
    assert pages == 3
    assert [name for name, _, _ in seen] == [n for n in names if n != "obj-07"]
    assert seen[0] == ("obj-00", 6, (1, 1))
    assert store.list_pg(POOL, 3, None, 10) == ([("elsewhere", 0, (1, 1))], None)
    assert store.list_pg(POOL + 1, 2, None, 10) == ([], None)
    exact, more = store.list_pg(POOL, 3, None, 1)
    assert len(exact) == 1 and more is None


def test_usage(store: ObjectStore) -> None:
    ok(primary(store, "a", Write(0, b"x" * 1000)))
    ok(primary(store, "b", Truncate(5000)))
    ok(primary(store, "c", Write(0, b"x")))
    ok(primary(store, "c", Delete()))
    usage = store.usage()
    assert usage["objects"] == 2 and usage["bytes"] == 6000 and usage["db_bytes"] > 0


def test_removing_a_pg(store: ObjectStore) -> None:
    ok(primary(store, "a", Write(0, b"x" * BS * 2), OmapSet({"k": b"v"}), pg=4))
    ok(primary(store, "b", Write(0, b"x"), pg=4))
    ok(primary(store, "b", Delete(), pg=4))
    ok(primary(store, "keep", Write(0, b"k"), pg=5))
    [result] = store.apply_batch([PgRemoveTxn(POOL, 4)])
    assert result.results == [2]
    assert store.pgs() == [(POOL, 5)]
    assert store.stat(POOL, "a") is None
    assert store.object_state(POOL, "b").version == (0, 0)
    assert store.pg_info(POOL, 4) == PgInfo((0, 0), 0)
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT count(*) FROM omap").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM blockmap").fetchone() == (1,)


def test_a_replica_refuses_a_different_write_at_a_seq_it_has(store: ObjectStore) -> None:
    # An earlier primary wrote seq 1 here; the new primary's seq 1 is another write.
    [first] = store.apply_batch([ReplicaTxn(POOL, 0, "a", [WriteFull(b"old")], (1, 1), "c.1:1")])
    ok(first)
    [other] = store.apply_batch([ReplicaTxn(POOL, 0, "b", [WriteFull(b"new")], (2, 1), "c.1:9")])
    assert other.code == Code.EAGAIN and "divergent" in other.message
    assert store.stat(POOL, "b") is None
    # The same write delivered twice is simply already there.
    [again] = store.apply_batch([ReplicaTxn(POOL, 0, "a", [WriteFull(b"old")], (1, 1), "c.1:1")])
    ok(again)
