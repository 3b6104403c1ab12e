"""The error types of store, and the result codes that carry them over the wire.

Local faults (a bad config file, a missing key) and remote answers (a daemon said
ENOENT) are different classes; every error a user can see says what went wrong and,
where there is one, what to do about it.
"""

from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    """Result codes in replies. Values are part of the wire protocol: never renumber."""

    OK = 0
    ENOENT = 1  # no such object / pool / key
    EEXIST = 2  # exclusive create of an existing object
    ECANCELED = 3  # a condition of a compound operation did not hold
    EINVAL = 4  # malformed or nonsensical request
    EPERM = 5  # the ticket's capabilities do not allow this
    EAGAIN = 6  # try again shortly (PG peering, daemon catching up)
    ESTALE = 7  # the sender's map is old: this daemon is not the primary
    ENOSPC = 8  # the daemon is full
    EIO = 9  # stored data failed its checksum
    EDEGRADED = 10  # fewer than min_size replicas up: writes refused
    ETIMEDOUT = 11  # replicas did not answer in time
    EBADSESSION = 12  # unknown or expired session: say hello again
    EFBIG = 13  # object or value too large
    EAUTH = 14  # authentication failed
    INPROGRESS = 15  # a repeated request the daemon is still working on: keep waiting
    ENOTSTAGED = 16  # a staged write's data is not (or no longer) held: stage it again


def code_of(raw: object, default: Code = Code.EINVAL) -> Code:
    """The Code a peer sent, or `default` for a value we do not know."""
    if isinstance(raw, int) and raw in Code._value2member_map_:
        return Code(raw)
    return default


class StoreError(Exception):
    """Base of every error store raises on purpose."""


class ConfigError(StoreError):
    """A local configuration problem: missing file, bad value. Fix the configuration."""


class AuthError(StoreError):
    """Authentication or authorisation failed."""


class ProtocolError(StoreError):
    """Bytes from the network that do not parse. Dropped and counted, never fatal."""


class MalformedDatagram(ProtocolError):
    pass


class BadMAC(ProtocolError):
    """A datagram whose authentication tag does not verify under the session key."""


class FrameError(ProtocolError):
    pass


class ChecksumError(StoreError):
    """Stored bytes do not match their checksum."""


class RemoteError(StoreError):
    """A daemon or the master answered with an error code."""

    def __init__(self, code: Code, message: str = "") -> None:
        self.code = Code(code)
        self.message = message
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)


class ClientTimeout(StoreError):
    """No answer before the deadline."""


def single_error(exc: BaseException) -> BaseException:
    """The one error inside nested exception groups of one error each, else `exc` itself.

    Structured concurrency wraps an error raised inside a nursery in a group; a command line
    wants to show the error, not the group.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
