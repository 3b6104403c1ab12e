"""Failure reports: daemons telling the master that a peer they share PGs with is silent.

Theory of operation
-------------------
Each daemon pings the daemons it shares PGs with over the peer links. One that has not
answered for the daemon's ``peer_grace`` is *reported* to the master, again on every
heartbeat while it stays silent, and the report is *withdrawn* when it answers again.

The master marks the target down when enough distinct daemons report it: at least
``min_reporters``, or every up daemon but the target when fewer than that remain (in a
cluster of two daemons, one voice is all there is). A single daemon with a bad link cannot
take a healthy peer down alone, and reports that are not repeated expire, so a reporter
that died or was partitioned away does not keep a target down.

While reports stand, a target that still heartbeats the master is *not* marked up again
(that would flap it up and down with every heartbeat); it comes back when its reporters
withdraw or their reports expire — or when it boots again.

No I/O here: the master's server feeds reports in and asks for decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FailureTracker:
    min_reporters: int = 2
    # target -> reporter -> when the report lapses unless repeated
    _reports: dict[int, dict[int, float]] = field(default_factory=dict)

    def report(self, target: int, reporter: int, now: float, ttl: float) -> None:
        if target != reporter:
            self._reports.setdefault(target, {})[reporter] = now + ttl

    def withdraw(self, target: int, reporter: int) -> None:
        reporters = self._reports.get(target)
        if reporters is not None:
            reporters.pop(reporter, None)
            if not reporters:
                del self._reports[target]

    def forget(self, osd_id: int) -> None:
        """A daemon booted (again) or left: reports about it and by it are void."""
        self._reports.pop(osd_id, None)
        for target in list(self._reports):
            self.withdraw(target, osd_id)

    def reporters(self, target: int, now: float, up: set[int]) -> list[int]:
        """Up daemons whose reports on `target` still stand."""
        reporters = self._reports.get(target, {})
        for reporter, lapses in list(reporters.items()):
            if now > lapses or reporter not in up:
                self.withdraw(target, reporter)
        return sorted(r for r in self._reports.get(target, {}) if r in up)

    def to_mark_down(self, now: float, up: set[int]) -> dict[int, list[int]]:
        """Up targets enough daemons report silent, with who reported them."""
        decided: dict[int, list[int]] = {}
        for target in sorted(self._reports):
            if target not in up:
                continue
            reporters = self.reporters(target, now, up)
            needed = max(1, min(self.min_reporters, len(up - {target})))
            if len(reporters) >= needed:
                decided[target] = reporters
        return decided

    def reported(self, target: int, now: float, up: set[int]) -> bool:
        """Whether any standing report holds `target` down."""
        return bool(self.reporters(target, now, up))
