"""The gateway's own errors, and the errno an NBD client sees for each failure.

NBD carries a handful of errnos (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP,
ESHUTDOWN); nbdkit turns what the plugin sets with ``nbdkit.set_error`` into one of them.
A full daemon is ENOSPC, a key that may not write is EPERM, a gateway that is stopping is
ESHUTDOWN, and every other failure of the cluster (a timeout, a damaged block, too few
replicas up, a lost lock) is EIO.
"""

from __future__ import annotations

import errno

import trio

from store.errors import ClientTimeout, Code, ConfigError, RemoteError, StoreError
from store.image.errors import (
    ImageBusy,
    ImageNotFound,
    InvalidImageArgument,
    LockLost,
)


class WriteRefused(StoreError):
    """A write through a read-only export, or by a key that may only read the pool."""


class GatewayStopped(StoreError):
    """The gateway's event loop is not running (nbdkit is shutting down, or it failed)."""


_BY_CODE = {
    Code.ENOSPC: errno.ENOSPC,
    Code.EPERM: errno.EPERM,
    Code.EAUTH: errno.EPERM,
    Code.ENOENT: errno.EIO,  # an object the image needs vanished, or the pool did
}


def leaf(exc: BaseException) -> BaseException:
    """The error that matters inside exception groups: the first that is not a cancellation."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(leaf(e), trio.Cancelled)]
        exc = (inner or list(exc.exceptions))[0]
    return exc


def errno_for(exc: BaseException) -> int:
    exc = leaf(exc)
    if isinstance(exc, RemoteError):
        return _BY_CODE.get(exc.code, errno.EIO)
    if isinstance(exc, WriteRefused):
        return errno.EPERM
    if isinstance(exc, ImageBusy):
        return errno.EBUSY
    if isinstance(exc, ImageNotFound):
        return errno.ENOENT
    if isinstance(exc, InvalidImageArgument | ConfigError):
        return errno.EINVAL
    if isinstance(exc, GatewayStopped | trio.RunFinishedError):
        return errno.ESHUTDOWN
    if isinstance(exc, ClientTimeout | LockLost):
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def result_name(exc: BaseException) -> str:
    """The `result` label of a failed request in the metrics: the errno the client got,
    as ``eio``, ``enospc``, ... (``cancelled`` when the gateway was stopping)."""
    if isinstance(leaf(exc), trio.Cancelled):
        return "cancelled"
    return errno.errorcode.get(errno_for(exc), "eio").lower()


def describe(exc: BaseException) -> str:
    """One line for nbdkit's log."""
    exc = leaf(exc)
    if isinstance(exc, StoreError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
