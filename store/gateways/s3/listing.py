"""One page of a bucket listing, merged in key order from the sharded index.

Theory of operation
-------------------
Each index shard keeps its keys sorted (the daemon's omap is ordered by code point, which
is the UTF-8 byte order S3 lists in). A page is a k-way merge: every shard is read from
just after the marker, a heap yields the smallest key of all, and a shard whose buffer
runs dry is read further before the heap may yield again, so order never breaks.

With a delimiter, a key whose remainder after the prefix holds the delimiter rolls up into
the *common prefix* up to and including it. A common prefix counts once towards
``max_keys``, and every other key under it is skipped: shards are re-read from just past
the prefix (``prefix + U+10FFFF``), and what remains under it is filtered, so even a
prefix with millions of keys costs one read per shard. When resuming after a marker that
lies inside a common prefix (a page that ended on that prefix), the prefix is not
repeated.

Nothing here touches the network: ``fetch(shard, start_after, limit)`` does, and tests
give it in-memory shards.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

# fetch(shard, start_after, limit) -> (sorted entries, whether the shard has more)
Fetch = Callable[[int, str | None, int], Awaitable[tuple[list[tuple[str, bytes]], bool]]]

PAST_EVERYTHING = "\U0010ffff"


@dataclass
class Page:
    contents: list[tuple[str, bytes]] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    last: str | None = None  # the last key or common prefix of the page


class _Shard:
    def __init__(self, index: int, limit: int) -> None:
        self.index = index
        self.limit = limit
        self.buffer: deque[tuple[str, bytes]] = deque()
        self.more = True
        self.position: str | None = None  # the last key read from the shard

    async def fill(self, fetch: Fetch, after: str | None) -> None:
        """Read the next batch after ``after`` (or after what was read last)."""
        start = after if after is not None else self.position
        entries, more = await fetch(self.index, start, self.limit)
        self.buffer.extend(entries)
        self.more = more and bool(entries)
        if entries:
            self.position = entries[-1][0]
        self.limit = min(self.limit * 2, 1000)


async def list_page(
    fetch: Fetch,
    shards: int,
    *,
    prefix: str = "",
    delimiter: str = "",
    marker: str | None = None,
    max_keys: int = 1000,
    key_of: Callable[[str], str] | None = None,
) -> Page:
    """``key_of`` maps what the shards hold to the key the prefix and delimiter apply to
    (listings of versions hold a key followed by a NUL and more)."""
    page = Page()
    if max_keys <= 0:
        return page
    per_shard = min(1000, max(16, (max_keys + 1) * 3 // (2 * shards) + 4))
    cursors = [_Shard(i, per_shard) for i in range(shards)]
    start = marker if marker is not None and marker >= prefix else None

    async with trio.open_nursery() as nursery:
        for cursor in cursors:
            nursery.start_soon(cursor.fill, fetch, start)

    async def head_of(cursor: _Shard) -> tuple[str, int] | None:
        while not cursor.buffer and cursor.more:
            await cursor.fill(fetch, None)
        return (cursor.buffer[0][0], cursor.index) if cursor.buffer else None

    heap = [h for h in [await head_of(c) for c in cursors] if h is not None]
    heapq.heapify(heap)

    async def skip_under(common: str) -> list[tuple[str, int]]:
        """Drop every key under ``common`` from every shard; returns the new heads."""

        async def one(cursor: _Shard) -> None:
            while True:
                while cursor.buffer and cursor.buffer[0][0].startswith(common):
                    cursor.buffer.popleft()
                if cursor.buffer or not cursor.more:
                    return
                past = common + PAST_EVERYTHING
                await cursor.fill(fetch, max(past, cursor.position or ""))

        async with trio.open_nursery() as nursery:
            for cursor in cursors:
                if (cursor.buffer and cursor.buffer[0][0].startswith(common)) or (
                    not cursor.buffer and cursor.more
                ):
                    nursery.start_soon(one, cursor)
        heads = [h for h in [await head_of(c) for c in cursors] if h is not None]
        heapq.heapify(heads)
        return heads

    count = 0
    while heap:
        if count == max_keys:
            page.truncated = True
            break
        key, index = heapq.heappop(heap)
        cursor = cursors[index]
        _, value = cursor.buffer.popleft()
        following = await head_of(cursor)
        if following is not None:
            heapq.heappush(heap, following)
        if delimiter:
            rest = (key if key_of is None else key_of(key))[len(prefix) :]
            cut = rest.find(delimiter)
            if cut >= 0:
                common = prefix + rest[: cut + len(delimiter)]
                if marker is None or common > marker:
                    page.prefixes.append(common)
                    page.last = common
                    count += 1
                heap = await skip_under(common)
                continue
        page.contents.append((key, value))
        page.last = key
        count += 1
    return page
