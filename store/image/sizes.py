"""What an open image knows of its data objects, kept true under concurrent requests.

An object is known to be missing, or known to have some size; anything else is unknown
and costs a request to find out. Requests of several NBD connections run at once, so
what a request learns must not outlive a later change:

- a read or a stat *observes*: its answer is kept only if no change of that object began
  or ended while it was under way (it may otherwise describe the object before a write
  that has since been acknowledged);
- a change (write, zero, trim) *sets* what it made true once it has succeeded, unless
  another change of the same object overlapped it; a failed or overlapped change leaves
  the object unknown.

Each object has a stamp that every change bumps when it begins and when it ends; an
observation carries the stamp it started with. ``keep_for`` bounds how long anything is
believed (None: for ever, for the image's one writer; a reader must also allow for
changes made elsewhere). No I/O: the caller supplies the clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Change:
    """What a change made true; nothing said means unknown (as after a failure)."""

    exact: bool = False
    size: int | None = None  # with exact: the object's size, None for missing
    grown_to: int | None = None  # the object now reaches at least this far
    unchanged: bool = False  # the object's size did not change

    def missing(self) -> None:
        self.exact, self.size = True, None

    def sized(self, size: int) -> None:
        self.exact, self.size = True, size

    def grown(self, end: int) -> None:
        self.grown_to = end

    def same(self) -> None:
        self.unchanged = True


class ObjectSizes:
    def __init__(self, clock: Callable[[], float], keep_for: float | None) -> None:
        self._clock = clock
        self.keep_for = keep_for
        self._known: dict[int, tuple[int | None, float]] = {}
        self._stamps: dict[int, int] = {}
        self._changing: dict[int, int] = {}

    def clear(self) -> None:
        self._known.clear()

    def get(self, index: int) -> tuple[bool, int | None]:
        """(known, size or None for a missing object)."""
        entry = self._known.get(index)
        if entry is None:
            return False, None
        size, since = entry
        if self.keep_for is not None and self._clock() - since > self.keep_for:
            del self._known[index]
            return False, None
        return True, size

    def stamp(self, index: int) -> int:
        return self._stamps.get(index, 0)

    def observed(self, index: int, size: int | None, stamp: int) -> None:
        """A read or stat begun at ``stamp`` found the object ``size`` long (None: missing)."""
        if self._changing.get(index) or self.stamp(index) != stamp:
            return
        self._known[index] = (size, self._clock())

    @contextmanager
    def changing(self, index: int) -> Iterator[Change]:
        """Around a change of object ``index``; say what it made true on the Change."""
        self._changing[index] = self._changing.get(index, 0) + 1
        started = self._stamps[index] = self.stamp(index) + 1
        change = Change()
        failed = False
        try:
            yield change
        except BaseException:
            failed = True
            raise
        finally:
            # No other change of the object began or ended meanwhile: ours is the truth.
            alone = self._stamps[index] == started and not failed
            self._changing[index] -= 1
            if not self._changing[index]:
                del self._changing[index]
            self._stamps[index] += 1
            self._settle(index, change if alone else Change())

    def _settle(self, index: int, change: Change) -> None:
        known, before = self.get(index)
        if change.exact:
            self._known[index] = (change.size, self._clock())
        elif change.grown_to is not None and known:
            self._known[index] = (max(before or 0, change.grown_to), self._clock())
        elif not (change.unchanged and known):
            self._known.pop(index, None)
