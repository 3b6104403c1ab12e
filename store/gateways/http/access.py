"""Who may do what through the HTTP gateway: bearer tokens and public pools.

Writes and deletes always need ``Authorization: Bearer <token>`` with a token from the
gateway's token file; reads need it too unless the pool was named with ``--public``.
A token that is presented must be valid, even where none is needed, so that a client
with a wrong token learns it at once.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from store.errors import ConfigError

MIN_TOKEN_LENGTH = 16
CHALLENGE = 'Bearer realm="store"'


@dataclass(frozen=True)
class Denial:
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


def load_tokens(path: Path) -> tuple[bytes, ...]:
    """Tokens from a file: one a line; blank lines and lines starting with '#' skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from None
    tokens: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line) < MIN_TOKEN_LENGTH or not line.isascii() or any(c.isspace() for c in line):
            raise ConfigError(
                f"{path}:{number}: a token is one word of at least {MIN_TOKEN_LENGTH} "
                "ASCII characters (make one with `openssl rand -hex 32`)"
            )
        tokens.append(line.encode("ascii"))
    if not tokens:
        raise ConfigError(f"token file {path} holds no token")
    return tuple(tokens)


@dataclass(frozen=True)
class AccessPolicy:
    tokens: tuple[bytes, ...] = ()
    public_pools: frozenset[str] = frozenset()

    def check(self, pool: str, write: bool, authorization: str | None) -> Denial | None:
        """None when the request may proceed, else why not."""
        if authorization is not None:
            return self._check_token(authorization)
        if not write and pool in self.public_pools:
            return None
        if not self.tokens:
            what = "writes" if write else f"reads of pool {pool!r} (it is not public)"
            return Denial(403, f"this gateway refuses {what}: it was started without --token-file")
        return Denial(
            401,
            f"{'writing' if write else 'reading pool ' + repr(pool)} needs a token: "
            "send 'Authorization: Bearer <token>'",
            (("WWW-Authenticate", CHALLENGE),),
        )

    def _check_token(self, authorization: str) -> Denial | None:
        scheme, _, credentials = authorization.strip().partition(" ")
        token = credentials.strip()
        if scheme.lower() != "bearer" or not token:
            return Denial(
                401,
                "the Authorization header must be 'Bearer <token>'",
                (("WWW-Authenticate", f'{CHALLENGE}, error="invalid_request"'),),
            )
        presented = token.encode("latin-1", errors="replace")
        # Compare with every token, so the time taken says nothing about which matched.
        valid = False
        for known in self.tokens:
            valid |= hmac.compare_digest(presented, known)
        if not valid:
            return Denial(403, "the bearer token is not valid for this gateway")
        return None
