"""The smart client: objects by name, placement computed locally, requests straight to daemons.

``Client.connect(config)`` authenticates with the master, follows the map, and opens one
UDP socket. Every object operation hashes the name to its PG, finds the PG's primary in the
map and sends the request there. Answers that mean "your map is old" (ESTALE) make the
client wait for a newer map; "try again" (EAGAIN: the PG is peering) and EDEGRADED retry
after a pause; everything stops at the request's deadline. A logical request keeps its
request id across these retries, so a daemon that already applied it recognises it.

Large reads are split into extents of READ_EXTENT bytes, each one request answered in
fragments (several datagrams, see ``store.wire.fragments``); at most as many extents are in
flight as the socket's receive buffer holds, so that a burst of answers is not dropped.
Without a receive buffer that large (an unprivileged process on a default kernel), reads
are split into pieces that each fit one datagram, read in parallel by at most
PIECE_WORKERS tasks per call; the transport's per-daemon window bounds how many are in
flight. A write larger than one datagram is cut into extents of at most STAGE_EXTENT bytes;
the pieces of an extent are *staged* with the PG's primary (held in its memory, see
``store.osd.staging``), then one request commits the extent: the daemons apply and
replicate it as one write, so each extent lands whole or not at all.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from store.client.config import ClientConfig
from store.client.master_link import MasterLink
from store.client.transport import GiveUp, TargetMoved, Transport
from store.client.udp import Address, open_udp_socket
from store.errors import ClientTimeout, Code, RemoteError, code_of
from store.placement import ClusterMap, PoolSpec, acting_set, pg_of, primary
from store.rpc import parse_hostport
from store.wire.stages import StagePiece, piece_size, stage_piece

log = logging.getLogger("store.client")

RETRY_PAUSE = 0.05
STAGE_EXTENT = 8 * 1024 * 1024  # bytes committed by one staged write (a daemon takes 32 MiB)
EXTENT_WORKERS = 4  # extents of one large write staged at a time
STAGE_ATTEMPTS = 4  # stagings of one extent before its commit's ENOTSTAGED is final
BODY_OVERHEAD = 512  # header, tag, msgpack framing and object name, generously
BLOCK = 4096
READ_EXTENT = 1024 * 1024  # bytes of one read answered in fragments
FRAGMENT_SLACK = 4096  # msgpack around the data of a fragmented reply
WHOLE_READ_ATTEMPTS = 8  # reads of a whole object restarted by writes landing meanwhile


@dataclass(frozen=True)
class ObjectStat:
    size: int
    version: tuple[int, int]
    mtime: float


class Client:
    def __init__(
        self,
        config: ClientConfig,
        master: MasterLink,
        transport: Transport,
        receive_buffer: int = 0,
    ) -> None:
        self.config = config
        self.master = master
        self.transport = transport
        self.max_piece = ((config.max_datagram - BODY_OVERHEAD - 1024) // BLOCK) * BLOCK
        self.stage_step = piece_size(config.max_datagram)  # data of one staged piece
        self.parallel = trio.CapacityLimiter(64)
        # Fragmented reads in flight at once: three quarters of the receive buffer.
        slots = (receive_buffer * 3 // 4) // (READ_EXTENT + FRAGMENT_SLACK)
        self.read_slots = trio.Semaphore(slots) if slots >= 2 else None

    @classmethod
    @asynccontextmanager
    async def connect(cls, config: ClientConfig) -> AsyncIterator[Client]:
        sock = open_udp_socket()
        try:
            async with trio.open_nursery() as nursery:
                master = await MasterLink.open(config, nursery)
                transport = Transport(
                    sock,
                    credentials=lambda: _credentials(master),
                    epoch=lambda: master.map.epoch if master.map else 0,
                    max_datagram=config.max_datagram,
                )
                nursery.start_soon(transport.run)
                try:
                    yield cls(config, master, transport, sock.receive_buffer())
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            # Only once the receive task is gone: closing under it would fail it with EBADF.
            sock.close()

    @property
    def map(self) -> ClusterMap:
        assert self.master.map is not None
        return self.master.map

    def pool(self, name: str) -> PoolSpec:
        return self.map.pool_by_name(name)

    # --- one request ---------------------------------------------------------------------

    async def execute(
        self,
        pool: str,
        name: str,
        ops: list[list[Any]],
        cond: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        fragments: int = 0,
        slow: bool = False,
    ) -> dict[Any, Any]:
        """One request; `fragments` lets a read's reply of up to that many bytes come in
        several datagrams; `slow` times it apart from small requests (see the transport)."""
        body: dict[str, Any] = {"o": name, "ops": ops}
        if cond:
            body["if"] = cond
        spec = self.pool(pool)
        return await self._send(spec, pg_of(spec, name), body, timeout, fragments, slow)

    async def _send(
        self,
        spec: PoolSpec,
        pg: int,
        body: dict[str, Any],
        timeout: float | None,
        fragments: int = 0,
        slow: bool = False,
    ) -> dict[Any, Any]:
        request_id = self.transport.new_request_id()
        body = {**body, "p": spec.id}

        async def attempt(
            target: int, address: Address, deadline: float, moved: GiveUp
        ) -> tuple[dict[Any, Any], int]:
            return await self.transport.request(
                target,
                address,
                body,
                encrypt=spec.encrypt,
                deadline=deadline,
                request_id=request_id,
                give_up=moved,
                fragments=fragments,
                slow=slow,
            )

        return await self._routed(spec, pg, timeout, attempt)

    async def _stage(self, spec: PoolSpec, pg: int, pieces: list[StagePiece]) -> None:
        """Send the pieces of a stage to the PG's primary, routed as ``_send`` routes a
        request; pieces already held are not sent again after a transient answer."""
        todo = pieces

        async def attempt(
            target: int, address: Address, deadline: float, moved: GiveUp
        ) -> tuple[dict[Any, Any], int]:
            nonlocal todo
            reply, epoch, left = await self.transport.send_pieces(
                target, address, todo, encrypt=spec.encrypt, deadline=deadline, give_up=moved
            )
            todo = [todo[i] for i in left]
            return reply, epoch

        await self._routed(spec, pg, None, attempt)

    async def _routed(
        self,
        spec: PoolSpec,
        pg: int,
        timeout: float | None,
        attempt: Callable[[int, Address, float, GiveUp], Awaitable[tuple[dict[Any, Any], int]]],
    ) -> dict[Any, Any]:
        """``attempt`` (target daemon, its address, deadline, give_up) with the PG's primary
        until it is answered OK or with an error that is final: transient answers wait for
        the map to change or a pause, ESTALE fetches the newer map it names."""
        deadline = trio.current_time() + (timeout or self.config.timeout)
        pause = RETRY_PAUSE
        last_problem = "no daemon of the acting set is up"
        while True:
            m = self.map
            if spec.id not in m.pools:
                raise RemoteError(Code.ENOENT, f"pool {spec.name!r} no longer exists")
            target = primary(m, spec.id, pg)
            if target is not None:
                address = parse_hostport(m.osds[target].addr)

                def moved(m: ClusterMap = m, target: int = target) -> str | None:
                    # A dead primary never answers: follow the map once it names another.
                    now = self.map
                    if now.epoch == m.epoch:
                        return None
                    if spec.id not in now.pools or primary(now, spec.id, pg) != target:
                        return f"the map of epoch {now.epoch} names another primary"
                    return None

                try:
                    reply, epoch = await attempt(target, address, deadline, moved)
                except TargetMoved as exc:
                    last_problem = str(exc)
                    continue
                except ClientTimeout as exc:
                    if pause == RETRY_PAUSE:  # no earlier answer explains it
                        raise
                    raise ClientTimeout(
                        f"pg {spec.id}.{pg:x} of pool {spec.name!r} not served in time: {last_problem}"
                    ) from exc
                code = code_of(reply.get("r"))
                if code not in (Code.ESTALE, Code.EAGAIN, Code.EDEGRADED):
                    if code != Code.OK:
                        raise RemoteError(code, str(reply.get("m", "")))
                    return reply
                last_problem = f"osd.{target}: {code.name} {reply.get('m', '')}"
                if code == Code.ESTALE and epoch > m.epoch:
                    with trio.move_on_at(deadline):
                        await self.master.refresh_map(epoch)
                    continue
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                raise ClientTimeout(
                    f"pg {spec.id}.{pg:x} of pool {spec.name!r} not served in time: {last_problem}"
                )
            await self.master.wait_for_map_change(min(pause, remaining))
            pause = min(pause * 2, 1.0)

    # --- objects -------------------------------------------------------------------------

    async def write(self, pool: str, name: str, data: bytes | memoryview, offset: int = 0) -> None:
        """Write `data` at `offset`: one request when it fits a datagram, else staged
        extents (each applied atomically). A view must not change until this returns."""
        if not data:
            await self.execute(pool, name, [["create", False]])
        elif len(data) <= self.max_piece:
            await self.execute(pool, name, [["write", offset, data]])
        else:
            await self._write_staged(pool, name, data, offset, full=False)

    async def write_full(self, pool: str, name: str, data: bytes) -> None:
        """Replace the object's content. Atomic up to STAGE_EXTENT bytes."""
        if len(data) <= self.max_piece:
            await self.execute(pool, name, [["write_full", data]])
        else:
            await self._write_staged(pool, name, data, 0, full=True)

    async def _write_staged(
        self, pool: str, name: str, data: bytes | memoryview, offset: int, *, full: bool
    ) -> None:
        view = memoryview(data)  # extents and pieces are views: packing them copies once
        extents = _cuts(offset, len(data), STAGE_EXTENT)
        if full:
            # The first extent replaces the content; only then may the rest be added.
            start, n = extents.pop(0)
            await self._commit_extent(pool, name, view[:n], start, full=True)

        async def one(start: int, n: int) -> None:
            await self._commit_extent(pool, name, view[start - offset : start - offset + n], start)

        await _each(extents, one, EXTENT_WORKERS)

    async def _commit_extent(
        self, pool: str, name: str, chunk: memoryview, offset: int, *, full: bool = False
    ) -> None:
        """Stage `chunk` with the primary in pieces of one datagram, then commit it as one
        write. The stage is gone if the daemon restarted or the primary changed meanwhile
        (ENOTSTAGED): stage it again, under a new token."""
        spec = self.pool(pool)
        pg = pg_of(spec, name)
        step = self.stage_step
        for attempt in range(STAGE_ATTEMPTS):
            token = secrets.randbits(63)
            await self._stage(
                spec,
                pg,
                [
                    stage_piece(token, at, len(chunk), spec.id, pg, chunk[at : at + step])
                    for at in range(0, len(chunk), step)
                ],
            )
            try:
                await self.execute(
                    pool, name, [["staged", token, offset, len(chunk), full]], slow=True
                )
                return
            except RemoteError as exc:
                if exc.code != Code.ENOTSTAGED or attempt == STAGE_ATTEMPTS - 1:
                    raise
                log.debug("staged write of %r at %d lost its stage (%s); again", name, offset, exc)

    async def read(self, pool: str, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes from ``offset`` (fewer past the end). Without ``length``: the
        rest of the object, all of it as of one version (a write landing meanwhile makes
        the read start again, so the bytes never mix two versions)."""
        if length is None:
            return await self._read_to_end(pool, name, offset)
        pieces, _ = await self._read_range(pool, name, offset, length)
        return b"".join(_in_order(pieces, offset))

    async def read_extents(
        self, pool: str, name: str, offset: int, length: int
    ) -> list[bytes | bytearray]:
        """What ``read`` answers, as the consecutive pieces it was read in (a large read
        is several requests): for callers that pass the bytes on without joining them. A
        piece that came in fragments is the buffer it was put together in."""
        pieces, _ = await self._read_range(pool, name, offset, length)
        return _in_order(pieces, offset)

    async def _read_to_end(self, pool: str, name: str, offset: int) -> bytes:
        first = self._read_step
        for _ in range(WHOLE_READ_ATTEMPTS):
            # The size and the first extent in one request: one snapshot of the object.
            reply = await self._read_request(pool, name, [["stat"], ["read", offset, first]], first)
            size, version = int(reply["res"][0]["size"]), reply.get("v")
            head = bytes(reply["res"][1])
            start = offset + len(head)
            if start >= size:
                return head
            pieces, versions = await self._read_range(pool, name, start, size - start)
            if all(v == version for v in versions):
                return b"".join([head, *_in_order(pieces, start)])
        raise RemoteError(Code.EAGAIN, f"{name!r} kept changing while it was read")

    async def _read_range(
        self, pool: str, name: str, offset: int, length: int
    ) -> tuple[dict[int, bytes | bytearray], list[Any]]:
        """The range as pieces by offset, and the object version each was read at."""
        pieces: dict[int, bytes | bytearray] = {}
        versions: list[Any] = []
        if length <= self.max_piece:
            reply = await self.execute(pool, name, [["read", offset, length]])
            return {offset: bytes(reply["res"][0])}, [reply.get("v")]

        async def one(off: int, n: int) -> None:
            reply = await self._read_request(pool, name, [["read", off, n]], n)
            data = reply["res"][0]
            pieces[off] = data if type(data) is bytearray else bytes(data)
            versions.append(reply.get("v"))

        end = offset + length
        step = self._read_step
        await _each([(off, min(step, end - off)) for off in range(offset, end, step)], one)
        return pieces, versions

    @property
    def _read_step(self) -> int:
        """Bytes per read request: an extent answered in fragments, else one datagram."""
        return self.max_piece if self.read_slots is None else READ_EXTENT

    async def _read_request(
        self, pool: str, name: str, ops: list[list[Any]], length: int
    ) -> dict[Any, Any]:
        """One request reading up to ``length`` bytes: answered in fragments while the
        receive buffer has room for them (``read_slots``), else in one datagram."""
        if self.read_slots is None:
            return await self.execute(pool, name, ops)
        async with self.read_slots:
            return await self.execute(pool, name, ops, fragments=length + FRAGMENT_SLACK)

    async def stat(self, pool: str, name: str) -> ObjectStat:
        reply = await self.execute(pool, name, [["stat"]])
        st = reply["res"][0]
        version = (int(st["version"][0]), int(st["version"][1]))
        return ObjectStat(size=int(st["size"]), version=version, mtime=float(st["mtime"]))

    async def delete(self, pool: str, name: str) -> None:
        await self.execute(pool, name, [["delete"]])

    async def truncate(self, pool: str, name: str, size: int) -> None:
        await self.execute(pool, name, [["truncate", size]])

    async def omap_set(self, pool: str, name: str, values: dict[str, bytes]) -> None:
        await self.execute(pool, name, [["omap_set", values]])

    async def omap_get(self, pool: str, name: str, keys: Sequence[str]) -> dict[str, bytes]:
        return dict((await self.execute(pool, name, [["omap_get", list(keys)]]))["res"][0])

    async def omap_list(
        self,
        pool: str,
        name: str,
        start_after: str | None = None,
        limit: int = 1000,
        prefix: str = "",
    ) -> tuple[list[tuple[str, bytes]], bool]:
        result = (await self.execute(pool, name, [["omap_list", start_after, limit, prefix]]))[
            "res"
        ][0]
        return [(k, v) for k, v in result["entries"]], bool(result["more"])

    async def omap_rm(self, pool: str, name: str, keys: Sequence[str]) -> None:
        await self.execute(pool, name, [["omap_rm", list(keys)]])

    async def setxattr(self, pool: str, name: str, key: str, value: bytes) -> None:
        await self.execute(pool, name, [["setxattr", key, value]])

    async def getxattrs(self, pool: str, name: str) -> dict[str, bytes]:
        return dict((await self.execute(pool, name, [["getxattrs"]]))["res"][0])

    async def ls(self, pool: str, prefix: str = "") -> list[tuple[str, int]]:
        """Every object of the pool (name, size), in name order, asking each PG's primary."""
        spec = self.pool(pool)
        found: list[tuple[str, int]] = []

        async def one_pg(pg: int) -> None:
            cursor: str | None = None
            async with self.parallel:
                while True:
                    reply = await self._send(
                        spec, pg, {"pg": pg, "ls": {"c": cursor, "n": 500}}, None
                    )
                    found.extend((n, s) for n, s, _ in reply["objs"] if n.startswith(prefix))
                    cursor = reply["next"]
                    if cursor is None:
                        return

        async with trio.open_nursery() as nursery:
            for pg in range(spec.pg_num):
                nursery.start_soon(one_pg, pg)
        return sorted(found)

    def locate(self, pool: str, name: str) -> dict[str, Any]:
        spec = self.pool(pool)
        pg = pg_of(spec, name)
        return {
            "pool": spec.name,
            "pool_id": spec.id,
            "pg": f"{spec.id}.{pg:x}",
            "acting": list(acting_set(self.map, spec.id, pg)),
            "primary": primary(self.map, spec.id, pg),
            "epoch": self.map.epoch,
        }


PIECE_WORKERS = 32  # tasks sending the pieces of one large read or write


def _cuts(offset: int, length: int, step: int) -> list[tuple[int, int]]:
    """[offset, offset + length) as (start, length) pieces that, but for the first, start
    on multiples of `step` (so that daemons never read-modify-write a block two pieces
    share)."""
    cuts = [offset]
    nxt = (offset // step + 1) * step
    while nxt < offset + length:
        cuts.append(nxt)
        nxt += step
    cuts.append(offset + length)
    return [(start, end - start) for start, end in itertools.pairwise(cuts)]


async def _each(
    pieces: list[tuple[int, int]],
    fn: Callable[[int, int], Awaitable[None]],
    workers: int = PIECE_WORKERS,
) -> None:
    """Run `fn(offset, length)` for every piece, at most `workers` at a time: a few
    tasks taking pieces in turn rather than one task per piece (a 1 GiB read is 17,000)."""
    if len(pieces) == 1:
        await fn(*pieces[0])
        return
    todo = iter(pieces)

    async def worker() -> None:
        for off, n in todo:
            await fn(off, n)

    async with trio.open_nursery() as nursery:
        for _ in range(min(workers, len(pieces))):
            nursery.start_soon(worker)


def _credentials(master: MasterLink) -> tuple[bytes, bytes]:
    creds = master.credentials
    assert creds is not None
    return creds.ticket, creds.session_key


def _in_order(pieces: dict[int, bytes | bytearray], offset: int) -> list[bytes | bytearray]:
    """The pieces from ``offset`` on, in order, up to the first gap (a short piece before
    it: the object ends there)."""
    ordered, expected = [], offset
    for off in sorted(pieces):
        if off != expected:
            break
        ordered.append(pieces[off])
        expected += len(pieces[off])
    return ordered
