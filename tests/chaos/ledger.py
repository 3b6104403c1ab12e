"""What a writer was told about its writes, and which object contents that allows.

Theory of operation
-------------------
Every write is a whole new content for an object, derived from ``(name, generation,
size)`` alone (:func:`content`), so nothing but this ledger needs keeping. Each 4 KiB block
starts with a tag naming the object, generation and block, so a wrong read can be
explained block by block (:func:`describe`).

For each object the ledger keeps the last **acknowledged** attempt and the attempts made
since whose outcome is unknown (**pending**: they failed, timed out, were refused, or were
cut off when the run stopped). An attempt is pending from the moment it begins; an
acknowledgement promotes it and forgets every older one. A read is then judged against the
contents the cluster may rightly hold:

* the acknowledged content;
* the content of any pending attempt, whole;
* a **torn** pending attempt, when it did not fit one datagram. ``Client.write_full``
  sends the first piece (``max_piece`` bytes) as one atomic ``write_full`` and then the
  rest as parallel ``write`` pieces, each atomic, cut every ``max_piece`` bytes. Without
  an acknowledgement any subset of the later pieces may have landed: the object then holds
  the first piece, then each later piece either written or a hole of zeros, and ends with
  a written piece;
* nothing at all, while no attempt was ever acknowledged.

Everything else — an older acknowledged generation, bytes of no attempt, a missing object
that was acknowledged — is a lost or wrong write. A write refused with a clear error
(below ``min_size``) may still have been applied by the primary before it counted the
copies, so it is pending like any other unanswered write, and counted apart.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field

BLOCK = 4096
_TAG = re.compile(rb"\[([^\[\]\x00]{1,200}) gen (\d+) block (\d+)\]")


def content(name: str, generation: int, size: int) -> bytes:
    """The bytes of generation ``generation`` of object ``name``: random-looking, and the
    same every time."""
    digest = hashlib.blake2b(f"{name}\0{generation}\0{size}".encode(), digest_size=8).digest()
    data = bytearray(random.Random(int.from_bytes(digest, "big")).randbytes(size))
    for block, offset in enumerate(range(0, size, BLOCK)):
        tag = f"[{name} gen {generation} block {block}]".encode()
        end = min(offset + len(tag), size)
        data[offset:end] = tag[: end - offset]
    return bytes(data)


def describe(data: bytes | None) -> str:
    """What a content is made of, block by block: 'gen 3 blocks 0-14, zeros blocks 15-20'."""
    if data is None:
        return "absent"
    runs: list[tuple[str, int, int]] = []
    for block, offset in enumerate(range(0, len(data), BLOCK)):
        chunk = data[offset : offset + BLOCK]
        match = _TAG.match(chunk)
        if not chunk.strip(b"\0"):
            what = "zeros"
        elif match is not None:
            what = f"{match.group(1).decode(errors='replace')} gen {int(match.group(2))}"
            if int(match.group(3)) != block:
                what += f" (its block {int(match.group(3))})"
        else:
            what = "unknown bytes"
        if runs and runs[-1][0] == what and runs[-1][2] == block - 1:
            runs[-1] = (what, runs[-1][1], block)
        else:
            runs.append((what, block, block))
    parts = [f"{w} block{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}" for w, a, b in runs]
    return f"{len(data)} bytes: " + (", ".join(parts) or "empty")


def is_torn_write(data: bytes, full: bytes, piece: int) -> bool:
    """Whether ``data`` is what an interrupted ``write_full(full)`` in pieces of ``piece``
    bytes may leave (see the module's docstring)."""
    if len(full) <= piece or not piece <= len(data) <= len(full):
        return False
    if data[:piece] != full[:piece]:
        return False
    if len(data) == piece:
        return True  # only the first piece landed
    if len(data) != len(full) and len(data) % piece:
        return False  # the size is always the end of a piece that landed
    for start in range(piece, len(data), piece):
        region = data[start : start + piece]
        if region != full[start : start + piece] and region.count(0) != len(region):
            return False
    last = ((len(data) - 1) // piece) * piece
    return data[last:] == full[last : len(data)]


@dataclass(frozen=True)
class Attempt:
    generation: int
    size: int

    def content(self, name: str) -> bytes:
        return content(name, self.generation, self.size)


@dataclass
class ObjectRecord:
    acked: Attempt | None = None
    pending: list[Attempt] = field(default_factory=list)
    generations: int = 0


@dataclass(frozen=True)
class Verdict:
    """How a read compares with the ledger: ``match`` names the allowed content it is
    (``acked``, ``pending``, ``torn``, ``absent``), or ``problem`` says what is wrong."""

    match: str | None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


class Ledger:
    """Acknowledged and unanswered writes, per object name. No I/O."""

    def __init__(self, max_piece: int) -> None:
        self.max_piece = max_piece
        self.objects: dict[str, ObjectRecord] = {}
        self.attempts = 0
        self.acked = 0
        self.unanswered: Counter[str] = Counter()  # why, for writes left pending

    def begin_write(self, name: str, size: int) -> Attempt:
        record = self.objects.setdefault(name, ObjectRecord())
        record.generations += 1
        self.attempts += 1
        attempt = Attempt(record.generations, size)
        record.pending.append(attempt)
        return attempt

    def acknowledged(self, name: str, attempt: Attempt) -> None:
        record = self.objects[name]
        if attempt not in record.pending:
            raise ValueError(f"{name}: generation {attempt.generation} is not pending")
        record.acked = attempt
        # Attempts end before the next of the same object begins: whatever came before
        # this acknowledged write_full is overwritten by it.
        record.pending = [a for a in record.pending if a.generation > attempt.generation]
        self.acked += 1

    def unanswered_write(self, reason: str) -> None:
        """Count a write that stays pending (it already is, from ``begin_write``)."""
        self.unanswered[reason] += 1

    def attempts_on(self, name: str) -> int:
        """Writes begun on ``name`` so far."""
        record = self.objects.get(name)
        return record.generations if record is not None else 0

    def names(self) -> list[str]:
        return sorted(self.objects)

    def acknowledged_names(self) -> list[str]:
        return sorted(n for n, r in self.objects.items() if r.acked is not None)

    def judge(self, name: str, data: bytes | None) -> Verdict:
        record = self.objects.get(name)
        if record is None:
            raise KeyError(f"{name} was never written")
        acked = record.acked
        if data is None:
            if acked is None:
                return Verdict("absent")
        elif acked is not None and len(data) == acked.size and data == acked.content(name):
            return Verdict("acked")
        else:
            for attempt in reversed(record.pending):
                full = attempt.content(name)
                if data == full:
                    return Verdict("pending")
                if is_torn_write(data, full, self.max_piece):
                    return Verdict("torn")
        expected = f"generation {acked.generation} ({acked.size} bytes)" if acked else "nothing"
        if record.pending:
            maybe = ", ".join(f"{a.generation} ({a.size} bytes)" for a in record.pending)
            expected += f", or unanswered generation {maybe}"
        return Verdict(None, f"{name}: holds {describe(data)}; acknowledged: {expected}")
