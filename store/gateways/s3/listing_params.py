"""Parameters of listing requests: integers in range, markers as opaque tokens, URL
encoding of keys in responses (``encoding-type=url``)."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote

from store.gateways.s3 import errors


def int_param(params: dict[str, str], name: str, low: int, high: int, *, default: int) -> int:
    """An integer parameter, checked to be in 0..2^31-1, then brought into [low, high]."""
    raw = params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not text.lstrip("-").isdigit() or len(text) > 12 or not 0 <= int(text) <= 2147483647:
        raise errors.invalid_argument(
            f"Provided {name} not an integer or within integer range", name, raw
        )
    return max(low, min(int(text), high))


def requested_max_keys(params: dict[str, str]) -> int:
    """What the client asked for (echoed in MaxKeys); pages hold at most 1000 keys."""
    return int_param(params, "max-keys", 0, 2147483647, default=1000)


def encode_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode("utf-8")).decode()


def decode_token(token: str, name: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        raise errors.invalid_argument(
            "The continuation token provided is incorrect", name, token
        ) from None


def url_encoding(params: dict[str, str]) -> bool:
    encoding = params.get("encoding-type")
    if encoding is not None and encoding.lower() != "url":
        raise errors.invalid_argument(
            "Invalid Encoding Method specified in Request", "encoding-type", encoding
        )
    return encoding is not None


def enc(text: str, url: bool) -> str:
    # %20 for a space (not "+"): it reads back right whether a client unquotes with or
    # without plus-as-space.
    return quote(text, safe="/") if url else text
