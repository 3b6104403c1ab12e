"""What the client transport keeps per daemon and per request in flight.

A ``DaemonLink`` holds the session with one daemon (``ClientSession``: its id, keys and
send sequence), the round-trip estimators that time retransmissions (``RttEstimator``, as
TCP's), the window that bounds the requests in flight to it, and the count of sends that
met no answer. A ``Waiter`` is where the answer to one request is delivered (a whole reply,
or the fragments of one); a ``PiecesWaiter`` collects the answers to the pieces of one
staged write sent together (``Transport.send_pieces``). No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from store.client.udp import Address
from store.errors import Code
from store.wire.datagram import DatagramCipher
from store.wire.fragments import Reassembly


class RttEstimator:
    """Jacobson/Karels smoothed RTT, as TCP does (RFC 6298), with our own bounds."""

    def __init__(self, initial: float = 0.25, min_rto: float = 0.05, max_rto: float = 2.0) -> None:
        self.srtt: float | None = None
        self.rttvar = initial / 2
        self.min_rto, self.max_rto = min_rto, max_rto
        self._rto = initial
        self.backoff = 1.0

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._rto = self.srtt + max(4 * self.rttvar, 0.005)
        self.backoff = 1.0

    def timed_out(self) -> None:
        self.backoff = min(self.backoff * 2, 16.0)

    def rto(self) -> float:
        return min(self.max_rto, max(self.min_rto, self._rto * self.backoff))


@dataclass
class ClientSession:
    session_id: int
    cipher: DatagramCipher
    send_seq: int = 0

    def next_seq(self) -> int:
        self.send_seq += 1
        return self.send_seq


@dataclass
class Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    reply: dict[Any, Any] | None = None
    epoch: int = 0
    reset: bool = False
    assembly: Reassembly | None = None  # for a request that takes a fragmented reply
    progress: int = 0  # fragments received so far


class PiecesWaiter:
    """The stage pieces of one ``send_pieces`` call in flight: each under a request id of
    its own (the daemon answers each, or several in one reply), all answered into this one
    waiter."""

    __slots__ = ("acked", "answers", "event", "heard", "in_flight", "problem", "window")

    def __init__(self, window: trio.Semaphore) -> None:
        self.window = window  # one permit held per piece in flight
        self.event = trio.Event()  # set by every answer
        self.in_flight: dict[int, tuple[int, float, bool]] = {}  # id -> (piece, sent, first)
        self.acked: set[int] = set()  # pieces the daemon holds
        self.answers: list[float] = []  # round trips of first sends answered, for the RTT
        self.problem: tuple[dict[Any, Any], int] | None = None  # the first answer not OK
        self.heard = False  # any answer since the caller last looked

    def answered(self, request_id: int, reply: dict[Any, Any], epoch: int) -> None:
        sent = self.in_flight.pop(request_id, None)
        if sent is None:
            return
        self.window.release()
        self.heard = True
        piece, at, first = sent
        if reply.get("r") == Code.OK:
            self.acked.add(piece)
            if first:
                self.answers.append(trio.current_time() - at)
        elif self.problem is None:
            self.problem = (reply, epoch)
        self.event.set()


@dataclass
class DaemonLink:
    osd_id: int
    address: Address
    window: trio.Semaphore
    rtt: RttEstimator = field(default_factory=RttEstimator)
    # Requests whose work grows with their data (a staged extent's commit: a write of MiBs
    # replicated) are timed apart: folded into `rtt`, they were sent again every time.
    slow_rtt: RttEstimator = field(default_factory=RttEstimator)
    session: ClientSession | None = None
    unanswered: int = 0  # sends in a row that met no answer at all
    hello_lock: trio.Lock = field(default_factory=trio.Lock)
    hello_waiter: Waiter | None = None
