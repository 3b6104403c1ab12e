"""Where object data lives: fixed-size slots of one data file, handed out copy-on-write.

Theory of operation
-------------------
The daemon's object data is kept in one file, ``DIR/blocks.dat``, cut into slots of the
store's block size. SQLite (see :mod:`store.osd.objectblocks`) maps each block of each
object to a slot and the block's checksum; the data itself is written once, into the
file, and never through SQLite's log.

A slot that the last commit references is never written. Every write of a block goes to
a free slot, and the slot the block used before is freed only once the commit that stops
referencing it is durable. So a crash at any point leaves the last committed mapping
pointing at the bytes it was committed with: data written for a transaction that never
committed sits in slots that nothing references, and is free again after a restart,
when the free space is rebuilt from the mapping.

The order of one batch is: ``pwrite`` the new blocks, ``fdatasync`` the data file, then
commit the SQLite transaction that references them (``sync_data`` then the caller's
COMMIT).

Blocks are written with ``O_DIRECT`` where the file system allows it, through a
page-aligned buffer (or straight from the buffer a replica received a forwarded write in,
which ``store.wire.frames`` puts on a page boundary): the data goes straight to the device
instead of being copied into fresh page-cache pages, which on a virtual machine costs far
more CPU than the copy itself (on the machine of docs/benchmarks.md, buffered writes
reached ~370 MB/s and direct ones 4 GB/s). Only calls of at least ``DIRECT_MIN`` bytes are
written directly: a direct write waits for the device, which small writes would pay once
each instead of once per batch's fsync (4 KiB writes ran at half speed).

Reads of ``DIRECT_MIN`` bytes or more are direct too, through an aligned buffer of the
reading thread's, then copied out: filling page-cache pages costs a read as much as a
write (a cold buffered 1 MiB read took twice the CPU of a direct one plus its copy), and a
large object is rarely read again soon. Smaller reads are buffered, on a descriptor of
their own, and stay cached; the kernel writes back and drops cached pages that a direct
write replaces, and writes back dirty ones before a direct read, so both paths see the
same bytes. Read-ahead is off (``POSIX_FADV_RANDOM``): an object's neighbours in the
file are other objects, often of PGs this daemon does not lead.
Where ``O_DIRECT`` is refused (tmpfs, a block size below the device's) I/O is buffered.

Readers run on the daemon's event loop, each read (mapping lookup and ``pread``) in one
synchronous call; the writer runs in a thread. A slot freed by a commit could still be
named by a mapping that a reader looked up just before that commit, so freed slots are
handed back to the allocator only by :meth:`BlockSpace.release`, which the event loop
calls between reads, after the batch has returned.

Within a batch each transaction runs in a savepoint. Slots it allocates are returned at
once if it rolls back (nothing can reference them); slots it frees are kept until the
whole batch commits, because a later rollback in the same batch could still need them.
"""

from __future__ import annotations

import bisect
import errno
import mmap
import operator
import os
import threading
from collections.abc import Iterable, Sequence
from itertools import compress, islice, repeat

Run = tuple[int, int]  # (first slot, number of slots)

IOV_MAX = 1024  # POSIX's minimum is 16; Linux takes 1024
DIRECT_CHUNK = 4 * 1024 * 1024  # bytes per direct write: the aligned buffer's size
# Fewer bytes than this in one call are written buffered: a direct write waits for the
# device, which a batch of small writes would pay once per run instead of once per fsync.
DIRECT_MIN = 256 * 1024


class SlotAllocator:
    """Free slots below ``end`` as sorted, disjoint, non-adjacent extents; past ``end`` all free.

    Sans-I/O and not thread-safe: :class:`BlockSpace` holds the lock.
    """

    def __init__(self, end: int = 0, used: Iterable[int] = ()) -> None:
        self.end = end
        marks = bytearray(end)
        for slot in used:
            if 0 <= slot < end:
                marks[slot] = 1
        self._starts: list[int] = []
        self._lengths: list[int] = []
        start = marks.find(0)
        while start != -1:
            stop = marks.find(1, start)
            if stop == -1:
                stop = end
            self._starts.append(start)
            self._lengths.append(stop - start)
            start = marks.find(0, stop)
        self._trim_end()

    @property
    def free_slots(self) -> int:
        """Free slots below ``end`` (the file's holes)."""
        return sum(self._lengths)

    def extents(self) -> list[Run]:
        return list(zip(self._starts, self._lengths, strict=True))

    def allocate(self, count: int) -> list[Run]:
        """``count`` slots, as few runs as possible: the first free extent that holds them
        all, else the end of the file (so a large write stays contiguous)."""
        if count <= 0:
            return []
        for i, length in enumerate(self._lengths):
            if length >= count:
                start = self._starts[i]
                if length == count:
                    del self._starts[i], self._lengths[i]
                else:
                    self._starts[i] += count
                    self._lengths[i] -= count
                return [(start, count)]
        start = self.end
        self.end += count
        return [(start, count)]

    def free(self, runs: Iterable[Run]) -> None:
        for start, count in runs:
            if count > 0:
                self._free_one(start, count)
        self._trim_end()

    def _free_one(self, start: int, count: int) -> None:
        if start < 0 or start + count > self.end:
            raise ValueError(f"slots {start}+{count} are outside the file ({self.end} slots)")
        i = bisect.bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] < start + count:
            raise ValueError(f"slots {start}+{count} are already free")
        if i > 0 and self._starts[i - 1] + self._lengths[i - 1] > start:
            raise ValueError(f"slots {start}+{count} are already free")
        merge_left = i > 0 and self._starts[i - 1] + self._lengths[i - 1] == start
        merge_right = i < len(self._starts) and self._starts[i] == start + count
        if merge_left and merge_right:
            self._lengths[i - 1] += count + self._lengths[i]
            del self._starts[i], self._lengths[i]
        elif merge_left:
            self._lengths[i - 1] += count
        elif merge_right:
            self._starts[i] = start
            self._lengths[i] += count
        else:
            self._starts.insert(i, start)
            self._lengths.insert(i, count)

    def _trim_end(self) -> None:
        # A free extent that reaches the end shrinks the file instead.
        if self._starts and self._starts[-1] + self._lengths[-1] == self.end:
            self.end = self._starts.pop()
            self._lengths.pop()


def runs_of(slots: Sequence[int]) -> list[Run]:
    """Slots, in any order, as sorted runs of consecutive slots.

    An overwrite of 4 MiB frees 1,024 slots at once, mostly in one run; a loop of Python
    per slot took 140 µs of the event loop. One run is recognised whole (distinct slots
    whose ends lie as far apart as they are many), and any other mix is cut into runs by
    ``map`` and ``itertools``, whose loops run in C. A slot given twice is a run of its
    own, for ``SlotAllocator.free`` to refuse."""
    ordered = sorted(slots)
    count = len(ordered)
    if not count:
        return []
    if ordered[-1] - ordered[0] == count - 1 and len(set(ordered)) == count:
        return [(ordered[0], count)]
    steps = map(operator.sub, islice(ordered, 1, None), ordered)  # slot minus the one before
    breaks = list(compress(range(1, count), map(operator.ne, steps, repeat(1))))
    firsts = [0, *breaks]  # where each run starts in `ordered`
    counts = map(operator.sub, [*breaks, count], firsts)
    return list(zip(map(ordered.__getitem__, firsts), counts, strict=True))


class BlockSpace:
    """The data file, its allocator and the slot bookkeeping of the writer's transactions."""

    def __init__(
        self, path: str, block_size: int, used: Iterable[int], *, direct: bool = True
    ) -> None:
        self.path = path
        self.block_size = block_size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # No read-ahead: the file holds many objects side by side, so the kernel's guess
        # (up to read_ahead_kb, 8 MiB on some virtual disks) mostly reads other objects.
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)
        # Only the writer thread writes, so one aligned buffer serves every direct write.
        self._direct_fd: int | None = None
        self._direct_buf: mmap.mmap | None = None
        # Readers are the event loop and scrub's threads: each has its own aligned buffer.
        self._direct_read_fd: int | None = None
        self._read_bufs = threading.local()
        if direct and DIRECT_CHUNK % block_size == 0:
            try:
                self._direct_fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
                self._direct_buf = mmap.mmap(-1, DIRECT_CHUNK)
                self._direct_read_fd = os.open(path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
            except (OSError, AttributeError):
                self._stop_direct()
        end = -(-os.fstat(self._fd).st_size // block_size)
        self._lock = threading.Lock()
        self._alloc = SlotAllocator(end, used)
        self._dirty = False
        self._txn_allocated: list[Run] = []
        self._txn_freed: list[int] = []
        self._batch_allocated: list[Run] = []
        self._batch_freed: list[int] = []
        self._released_later: list[int] = []

    @property
    def direct(self) -> bool:
        """Whether large writes (``DIRECT_MIN`` bytes or more) go with O_DIRECT."""
        return self._direct_fd is not None

    @property
    def direct_reads(self) -> bool:
        """Whether large reads (``DIRECT_MIN`` bytes or more) go with O_DIRECT."""
        return self._direct_read_fd is not None

    def close(self) -> None:
        os.close(self._fd)
        self._stop_direct()
        self._stop_direct_reads()

    def _stop_direct(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None
        if self._direct_buf is not None:
            self._direct_buf.close()
            self._direct_buf = None

    def _stop_direct_reads(self) -> None:
        fd, self._direct_read_fd = self._direct_read_fd, None
        if fd is not None:
            os.close(fd)

    # --- reading (any thread) -------------------------------------------------------

    def read_run(self, start: int, count: int) -> bytes:
        """The bytes of ``count`` slots from ``start``; short if the file is."""
        data = self._read_run(start, count, borrow=False)
        assert isinstance(data, bytes)
        return data

    def borrow_run(self, start: int, count: int) -> bytes | memoryview:
        """``read_run``, except that a large read may answer a view of the reading
        thread's own buffer instead of a copy: valid only until that thread's next read,
        for a caller that uses the bytes at once (the daemon's reply to a read)."""
        return self._read_run(start, count, borrow=True)

    def _read_run(self, start: int, count: int, *, borrow: bool) -> bytes | memoryview:
        bs = self.block_size
        size = count * bs
        if size >= DIRECT_MIN and self._direct_read_fd is not None:
            try:
                return self._read_direct(self._direct_read_fd, size, start * bs, borrow)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._stop_direct_reads()  # the file system refuses direct reads after all
        return os.pread(self._fd, size, start * bs)

    def _read_direct(
        self, fd: int, size: int, offset: int, borrow: bool = False
    ) -> bytes | memoryview:
        buf = getattr(self._read_bufs, "buf", None)
        if buf is None:
            buf = self._read_bufs.buf = mmap.mmap(-1, DIRECT_CHUNK)
        if borrow and size <= DIRECT_CHUNK:
            view = memoryview(buf)
            got = os.preadv(fd, [view[:size]], offset)
            return view[:got]
        parts: list[bytes] = []
        with memoryview(buf) as view:
            for at in range(0, size, DIRECT_CHUNK):
                want = min(DIRECT_CHUNK, size - at)
                got = os.preadv(fd, [view[:want]], offset + at)
                parts.append(bytes(view[:got]))
                if got < want:
                    break  # the end of the file
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- the writer's transactions --------------------------------------------------

    def write_blocks(self, runs: Sequence[bytes | bytearray | memoryview]) -> list[int]:
        """Write whole blocks to fresh slots; returns the slot of each block, in order.

        Each item of `runs` holds one or more consecutive blocks (a multiple of the block
        size): a large write passes its aligned middle as one run and is copied in bulk."""
        bs = self.block_size
        total = 0
        for run in runs:
            if len(run) % bs or not len(run):
                raise ValueError(f"a run of {len(run)} bytes is not whole blocks of {bs}")
            total += len(run)
        if not total:
            return []
        with self._lock:
            allocated = self._alloc.allocate(total // bs)
        self._txn_allocated.extend(allocated)
        slots: list[int] = []
        feed = _Feed(runs)
        direct = total >= DIRECT_MIN
        for start, count in allocated:
            self._write_run(feed.take(count * bs), start, direct)
            slots.extend(range(start, start + count))
        self._dirty = True
        return slots

    def _write_run(self, pieces: list[memoryview], start: int, direct: bool) -> None:
        """Write `pieces` (whole blocks together) to the consecutive slots from `start`,
        with O_DIRECT if `direct` and the file system allows it."""
        bs = self.block_size
        size = sum(len(p) for p in pieces)
        # A frame's buffer (store.wire.frames) puts a replicated write's data on a page
        # boundary: written as it is. EINVAL if it is not aligned after all.
        if (
            direct
            and self._direct_fd is not None
            and len(pieces) == 1
            and isinstance(getattr(pieces[0], "obj", None), bytearray)
        ):
            try:
                written = os.pwrite(self._direct_fd, pieces[0], start * bs)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
            else:
                if written != size:
                    raise OSError(errno.ENOSPC, f"short write to {self.path}")
                return
        if direct and self._direct_fd is not None and self._direct_buf is not None:
            buf = self._direct_buf
            feed = _Feed(pieces)
            try:
                for at in range(0, size, DIRECT_CHUNK):
                    part = min(DIRECT_CHUNK, size - at)
                    pos = 0
                    for piece in feed.take(part):
                        buf[pos : pos + len(piece)] = piece
                        pos += len(piece)
                    view = memoryview(buf)[:part]
                    try:
                        written = os.pwrite(self._direct_fd, view, start * bs + at)
                    finally:
                        view.release()
                    if written != part:
                        raise OSError(errno.ENOSPC, f"short write to {self.path}")
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._stop_direct()  # the file system refuses direct I/O after all
        offset = start * bs
        for at in range(0, len(pieces), IOV_MAX):  # pwritev takes at most IOV_MAX buffers
            group = pieces[at : at + IOV_MAX]
            want = sum(len(p) for p in group)
            if os.pwritev(self._fd, group, offset) != want:
                raise OSError(errno.ENOSPC, f"short write to {self.path}")
            offset += want

    def free_later(self, slots: Iterable[int]) -> None:
        """These slots stop being referenced when the current transaction commits."""
        self._txn_freed.extend(slots)

    def txn_done(self, committed: bool) -> None:
        """The current savepoint was released (``committed``) or rolled back."""
        if committed:
            self._batch_allocated.extend(self._txn_allocated)
            self._batch_freed.extend(self._txn_freed)
        else:
            with self._lock:
                self._alloc.free(self._txn_allocated)
        self._txn_allocated = []
        self._txn_freed = []

    def sync_data(self) -> None:
        """Make every block written in this batch durable; call before the COMMIT."""
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False

    def batch_done(self, committed: bool) -> None:
        """The batch's transaction committed, or was rolled back as a whole."""
        self.txn_done(committed)
        if committed:
            with self._lock:
                self._released_later.extend(self._batch_freed)
        else:
            with self._lock:
                self._alloc.free(self._batch_allocated)
        self._batch_allocated = []
        self._batch_freed = []

    def release(self) -> None:
        """Hand slots freed by finished batches back to the allocator.

        Call from the thread that reads, between reads (see the module's docstring)."""
        with self._lock:
            freed, self._released_later = self._released_later, []
            self._alloc.free(runs_of(freed))

    # --- accounting -----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        with self._lock:
            end, free = self._alloc.end, self._alloc.free_slots
        allocated = os.fstat(self._fd).st_blocks * 512
        return {
            "data_slots": end - free,
            "data_span_bytes": end * self.block_size,
            "data_allocated_bytes": allocated,
        }


class _Feed:
    """Hands out the bytes of a sequence of buffers in spans of any size, as views."""

    __slots__ = ("_at", "_buffers", "_index")

    def __init__(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        self._buffers = [memoryview(b).cast("B") for b in buffers]
        self._index = 0
        self._at = 0

    def take(self, size: int) -> list[memoryview]:
        out: list[memoryview] = []
        while size > 0:
            buffer = self._buffers[self._index]
            n = min(size, len(buffer) - self._at)
            out.append(buffer[self._at : self._at + n])
            size -= n
            self._at += n
            if self._at == len(buffer):
                self._index, self._at = self._index + 1, 0
        return out
