"""Login sessions of the dashboard and the throttle on failed logins (no I/O).

A session is a random token in a cookie (``HttpOnly; Secure; SameSite=Strict``); the
master keeps only its SHA-256, the admin it belongs to and when it ends. The throttle
counts failed logins per peer address and refuses a peer that failed too often lately,
so a password-guessing loop gets a few tries a minute, not thousands.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

COOKIE = "store_dashboard"
SESSION_TTL = 8 * 3600.0
MAX_SESSIONS = 1000


@dataclass
class _Session:
    client: str
    expires: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class LoginSessions:
    def __init__(
        self,
        ttl: float = SESSION_TTL,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max = max_sessions
        self._sessions: OrderedDict[bytes, _Session] = OrderedDict()

    def create(self, client: str) -> str:
        token = secrets.token_urlsafe(32)
        self._sessions[_digest(token)] = _Session(client, self._clock() + self.ttl)
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)  # the oldest login goes first
        return token

    def lookup(self, token: str | None) -> str | None:
        """The admin a token belongs to, or None (no such session, or it expired)."""
        if not token or len(token) > 256:
            return None
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires <= self._clock():
            del self._sessions[key]
            return None
        return session.client

    def end(self, token: str | None) -> None:
        if token:
            self._sessions.pop(_digest(token), None)

    def end_all_of(self, client: str) -> None:
        for key in [k for k, s in self._sessions.items() if s.client == client]:
            del self._sessions[key]

    def __len__(self) -> int:
        return len(self._sessions)


class LoginThrottle:
    """At most `max_failures` failed logins per peer within `window` seconds."""

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_peers: int = 10000,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self._clock = clock
        self._max_peers = max_peers
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, peer: str) -> deque[float]:
        now = self._clock()
        times = self._failures.get(peer)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[peer]
        return times

    def wait(self, peer: str) -> float:
        """Seconds before `peer` may try again; 0 when it may now."""
        times = self._recent(peer)
        if len(times) < self.max_failures:
            return 0.0
        return max(0.0, times[0] + self.window - self._clock())

    def failed(self, peer: str) -> None:
        times = self._recent(peer)
        times.append(self._clock())
        self._failures[peer] = times
        self._failures.move_to_end(peer)
        while len(self._failures) > self._max_peers:
            self._failures.popitem(last=False)

    def succeeded(self, peer: str) -> None:
        self._failures.pop(peer, None)


def parse_cookies(header: str | None) -> dict[str, str]:
    """``Cookie: a=1; b=2`` → ``{"a": "1", "b": "2"}``; whatever does not parse is skipped."""
    out: dict[str, str] = {}
    if not header or len(header) > 8192:
        return out
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in out:
            out[name] = value.strip().strip('"')
    return out


def session_cookie(token: str, ttl: float = SESSION_TTL) -> str:
    return f"{COOKIE}={token}; Path=/; Max-Age={int(ttl)}; Secure; HttpOnly; SameSite=Strict"


def cleared_cookie() -> str:
    return f"{COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict"
