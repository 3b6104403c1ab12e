"""The verifier's judgement, without a cluster: which contents a history of writes allows."""

from __future__ import annotations

from tests.chaos.ledger import Ledger, content, describe, is_torn_write

PIECE = 16384


def torn(full: bytes, landed: set[int]) -> bytes:
    """``full`` as left by a write_full whose first piece and the pieces starting at the
    offsets in ``landed`` were applied."""
    ends = [PIECE] + [min(start + PIECE, len(full)) for start in landed]
    out = bytearray(max(ends))
    out[:PIECE] = full[:PIECE]
    for start in landed:
        out[start : start + PIECE] = full[start : start + PIECE]
    return bytes(out)


def test_content_is_deterministic_and_tagged_per_block() -> None:
    a = content("obj-1", 3, 10000)
    assert a == content("obj-1", 3, 10000)
    assert a != content("obj-1", 4, 10000)
    assert a != content("obj-2", 3, 10000)
    assert len(a) == 10000
    assert describe(a) == "10000 bytes: obj-1 gen 3 blocks 0-2"
    tiny = content("a-very-long-object-name", 1, 10)
    assert len(tiny) == 10 and describe(tiny) == "10 bytes: unknown bytes block 0"


def test_describe_names_what_each_block_holds() -> None:
    mixed = content("x", 2, 8192) + bytes(4096) + content("x", 5, 12288)[8192:]
    assert describe(mixed) == (
        "16384 bytes: x gen 2 blocks 0-1, zeros block 2, x gen 5 (its block 2) block 3"
    )
    assert describe(None) == "absent"


def test_acknowledged_content_is_required_once_nothing_is_pending() -> None:
    ledger = Ledger(PIECE)
    first = ledger.begin_write("o", 5000)
    ledger.acknowledged("o", first)
    second = ledger.begin_write("o", 7000)
    ledger.acknowledged("o", second)
    assert ledger.judge("o", second.content("o")).match == "acked"
    stale = ledger.judge("o", first.content("o"))
    assert not stale.ok and stale.problem is not None
    assert "holds 5000 bytes: o gen 1" in stale.problem
    assert "acknowledged: generation 2 (7000 bytes)" in stale.problem
    assert not ledger.judge("o", None).ok  # an acknowledged object may not vanish
    assert not ledger.judge("o", second.content("o")[:-1]).ok


def test_an_unanswered_write_allows_the_old_or_the_new_content() -> None:
    ledger = Ledger(PIECE)
    acked = ledger.begin_write("o", 5000)
    ledger.acknowledged("o", acked)
    lost_1 = ledger.begin_write("o", 6000)
    ledger.unanswered_write("ClientTimeout")
    lost_2 = ledger.begin_write("o", 7000)  # cut off by the end of the run: no call at all
    assert ledger.judge("o", acked.content("o")).match == "acked"
    assert ledger.judge("o", lost_1.content("o")).match == "pending"
    assert ledger.judge("o", lost_2.content("o")).match == "pending"
    assert not ledger.judge("o", content("o", 4, 5000)).ok
    assert ledger.unanswered == {"ClientTimeout": 1}
    # The next acknowledged write settles it.
    final = ledger.begin_write("o", 100)
    ledger.acknowledged("o", final)
    assert not ledger.judge("o", lost_2.content("o")).ok
    assert not ledger.judge("o", acked.content("o")).ok


def test_a_never_acknowledged_object_may_be_absent() -> None:
    ledger = Ledger(PIECE)
    attempt = ledger.begin_write("new", 3000)
    assert ledger.judge("new", None).match == "absent"
    assert ledger.judge("new", attempt.content("new")).match == "pending"
    ledger.acknowledged("new", attempt)
    assert not ledger.judge("new", None).ok


def test_torn_writes_follow_the_pieces_of_write_full() -> None:
    full = content("big", 1, 4 * PIECE + 1000)  # pieces at 0 (atomic), 1P, 2P, 3P, 4P
    assert is_torn_write(full[:PIECE], full, PIECE)  # only the first piece
    assert is_torn_write(torn(full, {PIECE}), full, PIECE)
    assert is_torn_write(torn(full, {3 * PIECE}), full, PIECE)  # holes of zeros before it
    assert is_torn_write(torn(full, {2 * PIECE, 4 * PIECE}), full, PIECE)  # full length
    # Not what any subset of pieces leaves:
    assert not is_torn_write(full[: PIECE - 1], full, PIECE)
    assert not is_torn_write(full[: PIECE + 1], full, PIECE)
    assert not is_torn_write(bytes(PIECE) + full[PIECE : 2 * PIECE], full, PIECE)
    without_end = bytearray(torn(full, {PIECE, 2 * PIECE}))
    without_end[-PIECE:] = bytes(PIECE)  # a size no landed piece ends at
    assert not is_torn_write(bytes(without_end), full, PIECE)
    garbled = bytearray(torn(full, {PIECE, 2 * PIECE}))
    garbled[PIECE + 5] ^= 1
    assert not is_torn_write(bytes(garbled), full, PIECE)
    # A write of one piece is atomic: never torn.
    small = content("small", 1, PIECE)
    assert not is_torn_write(small[:4096], small, PIECE)


def test_torn_content_is_allowed_only_while_its_write_is_unanswered() -> None:
    ledger = Ledger(PIECE)
    attempt = ledger.begin_write("big", 3 * PIECE)
    half = torn(attempt.content("big"), {2 * PIECE})
    assert ledger.judge("big", half).match == "torn"
    ledger.acknowledged("big", attempt)
    assert not ledger.judge("big", half).ok
