"""The exclusive lock of an image and its lease (no I/O)."""

from __future__ import annotations

import pytest

from store.image import lock as locks
from store.image.errors import ImageBusy, InvalidImageArgument, LockLost

IMAGE = "rbd/disk"


def take(current: locks.Lock | None, holder: str, now: float) -> locks.Lock:
    return locks.acquire(current, IMAGE, holder=holder, owner=f"gw {holder}", now=now, lease=30)


def test_a_free_lock_is_taken_with_a_lease() -> None:
    lock = take(None, "a", now=100)
    assert lock == locks.Lock(holder="a", owner="gw a", expires=130)


def test_a_live_lock_refuses_others_and_names_its_holder() -> None:
    held = take(None, "a", now=100)
    with pytest.raises(ImageBusy, match="gw a") as err:
        take(held, "b", now=129.9)
    assert err.value.owner == "gw a"
    assert "unlock rbd/disk --force" in str(err.value)
    assert take(held, "a", now=120).expires == 150  # its own holder may take it again


def test_an_expired_lock_may_be_taken() -> None:
    held = take(None, "a", now=100)
    assert take(held, "b", now=130).holder == "b"


def test_renewal_extends_only_our_own_lease() -> None:
    held = take(None, "a", now=100)
    renewed = locks.renew(held, IMAGE, holder="a", now=110, lease=30)
    assert renewed.expires == 140 and renewed.owner == "gw a"
    with pytest.raises(LockLost, match="gw b"):
        locks.renew(take(held, "b", now=200), IMAGE, holder="a", now=200, lease=30)
    with pytest.raises(LockLost, match="broken"):
        locks.renew(None, IMAGE, holder="a", now=110, lease=30)


def test_release_leaves_other_holders_alone() -> None:
    held = take(None, "a", now=100)
    assert locks.release(held, holder="a") is None
    assert locks.release(held, holder="b") == held
    assert locks.release(None, holder="a") is None


def test_unlock_needs_force_for_a_live_lock() -> None:
    held = take(None, "a", now=100)
    with pytest.raises(ImageBusy, match="--force"):
        locks.unlock(held, IMAGE, now=110, force=False)
    locks.unlock(held, IMAGE, now=110, force=True)
    locks.unlock(held, IMAGE, now=131, force=False)
    locks.unlock(None, IMAGE, now=0, force=False)


def test_lease_bounds() -> None:
    assert locks.check_lease(3) == 3.0
    for bad in (0, 0.5, float("inf"), float("nan"), 7200):
        with pytest.raises(InvalidImageArgument):
            locks.check_lease(bad)


def test_describe_says_when_the_lease_ends() -> None:
    lock = locks.Lock(holder="a", owner="nbdkit on h", expires=130)
    assert lock.describe(now=100) == "nbdkit on h (lease ends in 30 s)"
    assert "ended 5 s ago" in lock.describe(now=135)
