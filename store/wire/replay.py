"""Anti-replay window over the sequence numbers of one direction of one session.

Theory of operation
-------------------
UDP reorders and duplicates, and an attacker can record and resend any datagram; its tag
still verifies. So each receiver remembers which seqs it has accepted: the highest one and,
in an int used as a bitmap, which of the ``size`` seqs at or below it were seen (bit ``i``
stands for ``highest - i``). A seq above ``highest`` shifts the bitmap up; one inside the
window checks and sets its bit; one below the window is refused, since nothing is known about
it any more. This is the sliding window of IPsec (RFC 4303, section 3.4.3).

Only call ``accept`` after the datagram's MAC verified. Otherwise a forged datagram with a huge
seq would slide the window past every genuine datagram still in flight and get them dropped.
"""

from __future__ import annotations


class ReplayWindow:
    __slots__ = ("_bitmap", "_highest", "_mask", "size")

    def __init__(self, size: int = 4096) -> None:
        if size < 1:
            raise ValueError(f"replay window size must be at least 1, got {size}")
        self.size = size
        self._mask = (1 << size) - 1
        self._highest = 0
        self._bitmap = 0

    @property
    def highest(self) -> int:
        """The highest seq accepted so far, 0 before the first."""
        return self._highest

    def accept(self, seq: int) -> bool:
        """True, and remember ``seq``, if it is new and not too old; else False.

        Call only for a datagram whose authentication tag has verified.
        """
        if seq <= 0:
            return False
        ahead = seq - self._highest
        if ahead > 0:
            if ahead >= self.size:
                self._bitmap = 1
            else:
                self._bitmap = ((self._bitmap << ahead) | 1) & self._mask
            self._highest = seq
            return True
        behind = -ahead
        if behind >= self.size:
            return False
        bit = 1 << behind
        if self._bitmap & bit:
            return False
        self._bitmap |= bit
        return True
