"""The C allocator's handling of large buffers, set for processes that move megabytes.

Every store process copies buffers of 64 KiB to 8 MiB all the time: datagrams decrypted
and joined into replies, extents joined into objects, TLS records into frames. glibc's
``malloc`` serves a request above ``M_MMAP_THRESHOLD`` with a fresh ``mmap`` and returns it
with ``munmap`` when freed, and gives the free top of its heap back to the kernel once it
exceeds ``M_TRIM_THRESHOLD``. Both thresholds start at 128 KiB and only adapt upwards as
large blocks are freed, so such a process keeps asking the kernel for new pages and
faulting them in one by one, zeroed, only to fill them with a copy. On a virtual machine a
page fault costs more than copying the page: a client reading 4 MiB objects spent a fifth of
its CPU on it.

:func:`tune` fixes both thresholds above the buffers we use: blocks up to 16 MiB come from
the heap and are reused, and up to 32 MiB of free heap stay with the process (per malloc
arena: the main thread's and one per thread that allocates). Larger blocks are still
mapped and unmapped on their own. Call it once, early; it does nothing where the C library
is not glibc, and leaves alone a process whose ``GLIBC_TUNABLES`` sets malloc's own values.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 16 * 1024 * 1024
TRIM_THRESHOLD = 32 * 1024 * 1024

_tuned = False


def tune() -> bool:
    """Set the thresholds (once per process); whether they were set."""
    global _tuned
    if _tuned:
        return True
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _tuned


_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]
_new_bytearray.restype = ctypes.py_object

UNINITIALIZED_MIN = 32 * 1024  # below this, zeroing costs less than the ctypes call


def uninitialized(size: int) -> bytearray:
    """A bytearray of ``size`` bytes whose contents are whatever its memory held before.

    ``bytearray(size)`` fills the buffer with zeros first; for a buffer about to be
    overwritten whole (a reply decrypted piece by piece into place, a frame received into
    place) that fill is wasted: 8 % of an S3 gateway's CPU serving 4 MiB GETs. Only for
    buffers the caller fills completely before anyone reads them: the old contents may be
    anything the process had in memory. Small buffers are zeroed anyway (the call costs
    more than the fill)."""
    if size < UNINITIALIZED_MIN:
        return bytearray(size)
    buffer: bytearray = _new_bytearray(None, size)
    return buffer


PAGE = mmap.PAGESIZE


def page_aligned(size: int, at: int = 0) -> memoryview:
    """An uninitialized buffer of ``size`` bytes whose byte ``at`` lies on a page boundary:
    from there on the data can go to disk with O_DIRECT as it is (``BlockSpace``), with
    no copy into an aligned buffer first. A view of a bytearray (one page larger)."""
    raw = uninitialized(size + PAGE)
    probe = ctypes.c_char.from_buffer(raw)
    address = ctypes.addressof(probe)
    del probe  # its hold on the buffer
    shift = -(address + at) % PAGE
    return memoryview(raw)[shift : shift + size]
