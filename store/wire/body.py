"""Datagram bodies: one msgpack map per datagram.

A body is attacker-controlled even after its tag verified (any client holding a ticket can
send anything), so ``unpack_untrusted`` accepts exactly one map, caps every length at what a
datagram can carry and refuses nesting deeper than any real message needs, so that code
walking a body never meets a structure it cannot handle.
"""

from __future__ import annotations

from typing import Any

import msgpack

from store.errors import MalformedDatagram
from store.wire.datagram import MAX_DATAGRAM

# The deepest real bodies are a map of lists of small maps; 32 leaves ample room.
MAX_BODY_DEPTH = 32

_LIMITS = {
    "max_str_len": MAX_DATAGRAM,
    "max_bin_len": MAX_DATAGRAM,
    "max_array_len": MAX_DATAGRAM,
    "max_map_len": MAX_DATAGRAM // 2,
    "max_ext_len": MAX_DATAGRAM,
}


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_untrusted(data: bytes, limit: int = MAX_DATAGRAM) -> dict[Any, Any]:
    """One msgpack map of at most `limit` bytes (a datagram's worth unless the caller
    reassembled a larger reply it asked for)."""
    if len(data) > limit:
        raise MalformedDatagram(f"body of {len(data)} bytes is larger than {limit} bytes")
    limits = _LIMITS if limit <= MAX_DATAGRAM else {**_LIMITS, "max_bin_len": limit}
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, **limits)
    except (ValueError, TypeError) as e:
        raise MalformedDatagram(f"undecodable body: {e}") from None
    if not isinstance(obj, dict):
        raise MalformedDatagram(f"body is a {type(obj).__name__}, not a map")
    _check_depth(obj)
    return obj


def _check_depth(body: dict[Any, Any]) -> None:
    # Breadth-first and iterative, so checking a hostile body cannot exhaust the Python stack.
    # Map keys need no look: a container as a key is unhashable and already refused.
    level: list[object] = [body]
    depth = 1
    while level:
        if depth > MAX_BODY_DEPTH:
            raise MalformedDatagram(f"body nested deeper than {MAX_BODY_DEPTH} levels")
        deeper: list[object] = []
        for container in level:
            members: Any = container.values() if type(container) is dict else container
            for item in members:
                # msgpack makes plain dicts and lists: exact type tests are the fast ones.
                if type(item) is dict or type(item) is list:
                    deeper.append(item)
        level = deeper
        depth += 1
