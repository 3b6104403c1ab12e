"""The exclusive lock of an image and its lease, as pure decisions.

A block device with a filesystem on it must have one writer. A writer records itself in
the image header: a ``holder`` id unique to that writer (random, per process), an
``owner`` text for people (client name, host, process id) and ``expires``, the wall-clock
time its lease ends. It renews the lease well before then. Anyone may take a lock whose
lease has ended (its holder died), and an operator may break a live one.

Every function here takes the current lock and returns the next one, or raises; the
caller writes the result back with a condition on the header's version, so two
contenders can never both win. Clocks of writers need to agree to well within a lease.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from store.image.errors import ImageBusy, InvalidImageArgument, LockLost

DEFAULT_LEASE = 30.0
MIN_LEASE = 1.0
MAX_LEASE = 3600.0


@dataclass(frozen=True)
class Lock:
    holder: str
    owner: str
    expires: float  # wall-clock seconds since the epoch

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        left = self.expires - now
        lease = f"lease ends in {left:.0f} s" if left > 0 else f"lease ended {-left:.0f} s ago"
        return f"{self.owner} ({lease})"


def check_lease(seconds: float) -> float:
    if not (math.isfinite(seconds) and MIN_LEASE <= seconds <= MAX_LEASE):
        raise InvalidImageArgument(
            f"a lease must be {MIN_LEASE:g} to {MAX_LEASE:g} seconds, not {seconds}"
        )
    return float(seconds)


def busy(image: str, lock: Lock, now: float) -> ImageBusy:
    return ImageBusy(
        f"image {image} is locked by {lock.describe(now)}: stop that writer, open the image "
        f"read-only, or if it is dead wait for its lease or run "
        f"`store image unlock {image} --force`",
        owner=lock.owner,
    )


def acquire(
    current: Lock | None, image: str, *, holder: str, owner: str, now: float, lease: float
) -> Lock:
    """Take the lock: free, expired or already ours. Raises ImageBusy otherwise."""
    if current is not None and current.holder != holder and not current.expired(now):
        raise busy(image, current, now)
    return Lock(holder=holder, owner=owner, expires=now + lease)


def renew(current: Lock | None, image: str, *, holder: str, now: float, lease: float) -> Lock:
    """Extend our lease. Raises LockLost if the lock is not ours any more."""
    if current is None or current.holder != holder:
        taken = f"; it is now held by {current.owner}" if current is not None else ""
        raise LockLost(f"the lock of image {image} was broken{taken}")
    return Lock(holder=holder, owner=current.owner, expires=max(current.expires, now + lease))


def release(current: Lock | None, *, holder: str) -> Lock | None:
    """Give the lock up if it is ours; someone else's lock stays."""
    if current is not None and current.holder == holder:
        return None
    return current


def unlock(current: Lock | None, image: str, *, now: float, force: bool) -> None:
    """An operator removes the lock: an expired one always, a live one only with ``force``."""
    if current is not None and not current.expired(now) and not force:
        raise ImageBusy(
            f"image {image} is locked by {current.describe(now)}; if that writer is dead, "
            f"`store image unlock {image} --force` breaks the lock",
            owner=current.owner,
        )
