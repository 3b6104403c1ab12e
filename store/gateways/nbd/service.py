"""One image, served by one nbdkit process: connections, the writer's lock, the I/O.

Everything here runs in the gateway's trio thread. An nbdkit process serves one image
to any number of NBD connections; they share one cluster client and one
:class:`~store.image.io.Image`, so what one connection writes the next one reads, and a
flush on any of them waits for the writes of all of them.

The process takes the image's lock when its first writable connection opens, keeps the
lease renewed while any writable connection is open, and releases it when the last one
closes (or nbdkit exits). Read-only connections take no lock and see the image as it is
in the cluster.

Every connection and request is counted into :attr:`ImageGateway.stats` (plain counters,
read by the metrics port in this same thread: ``store.metrics.nbd``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType

import trio

from store.client.api import Client
from store.client.config import ClientConfig
from store.errors import StoreError
from store.gateways.nbd.errors import WriteRefused, result_name
from store.gateways.nbd.settings import PluginSettings
from store.image import admin
from store.image.errors import ImageBusy
from store.image.header import read_header
from store.image.io import READER_CACHE_SECONDS, Image
from store.image.layout import Extent
from store.image.lease import LeaseKeeper, default_owner
from store.image.model import ImageHeader
from store.metrics.nbd import NbdStats

log = logging.getLogger("store.nbd")


@dataclass(frozen=True)
class Connection:
    """What nbdkit holds as the handle of one NBD connection."""

    readonly: bool
    size: int
    object_size: int

    @property
    def mode(self) -> str:
        return "readonly" if self.readonly else "writable"


class _Counted:
    """Times one request and counts it with its result when it ends."""

    __slots__ = ("kind", "length", "started", "stats")

    def __init__(self, stats: NbdStats, kind: str, length: int) -> None:
        self.stats = stats
        self.kind = kind
        self.length = length
        self.started = time.monotonic()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        typ: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        result = "ok" if exc is None else result_name(exc)
        self.stats.answered(self.kind, result, time.monotonic() - self.started, self.length)


class ImageGateway:
    def __init__(
        self,
        client: Client,
        settings: PluginSettings,
        header: ImageHeader,
        nursery: trio.Nursery,
    ) -> None:
        self.client = client
        self.settings = settings
        self.image = Image(client, settings.pool, header)
        self.keeper = LeaseKeeper(
            client,
            settings.pool,
            header.id,
            settings.spec,
            owner=default_owner(client.config.name, "nbdkit"),
            lease=settings.lease,
        )
        self.image.fence = self.keeper.check
        self._nursery = nursery
        self.stats = NbdStats()
        self._mutex = trio.Lock()
        self._writers = 0
        self._holding = False
        self._renewal: trio.CancelScope | None = None

    @classmethod
    @asynccontextmanager
    async def serve(
        cls, settings: PluginSettings, config: ClientConfig
    ) -> AsyncIterator[ImageGateway]:
        """Connect to the cluster and find the image; on exit, give up its lock."""
        async with Client.connect(config) as client:
            header = await admin.open_header(client, settings.pool, settings.image)
            _check_open(settings.spec, header)
            async with trio.open_nursery() as nursery:
                gateway = cls(client, settings, header, nursery)
                try:
                    yield gateway
                finally:
                    with trio.CancelScope(shield=True), trio.move_on_after(config.timeout):
                        await gateway._let_go()
                    nursery.cancel_scope.cancel()

    # --- connections ---------------------------------------------------------------------

    @property
    def holding_lock(self) -> bool:
        return self._holding

    async def open(self, readonly: bool) -> Connection:
        readonly = readonly or self.settings.readonly
        mode = "readonly" if readonly else "writable"
        try:
            async with self._mutex:
                if readonly:
                    header, _ = await read_header(
                        self.client, self.settings.pool, self.image.header.id, self.settings.spec
                    )
                    _check_open(self.settings.spec, header)
                else:
                    header = await self._open_writer()
                self.image.refresh(header)
        except BaseException as exc:
            self.stats.opened[(mode, result_name(exc))] += 1
            raise
        self.stats.opened[(mode, "ok")] += 1
        self.stats.connections[mode] += 1
        return Connection(readonly=readonly, size=header.size, object_size=header.object_size)

    async def _open_writer(self) -> ImageHeader:
        caps = self.client.master.credentials.caps if self.client.master.credentials else None
        if caps is not None and not caps.allows(self.settings.pool, write=True):
            raise WriteRefused(
                f"client.{self.client.config.name} may only read pool {self.settings.pool}: "
                "serve the image with readonly=true, or use a key with rw on the pool"
            )
        if self._holding:
            header = await self.keeper.renew()  # also brings a resize in
        else:
            header = await self.keeper.acquire()
            self._holding = True
            # Only now is this the image's one writer: what was learned before may be stale.
            self.image.sizes.clear()
            self.image.sizes.keep_for = None
            self._start_renewal()
            log.info("writing %s: lock taken by %s", self.settings.spec, self.keeper.owner)
        self._writers += 1
        return header

    async def close(self, conn: Connection) -> None:
        self.stats.connections[conn.mode] -= 1
        if conn.readonly:
            return
        async with self._mutex:
            self._writers -= 1
            if self._writers == 0:
                await self._let_go()

    def _start_renewal(self) -> None:
        scope = trio.CancelScope()
        self._renewal = scope

        async def renew() -> None:
            with scope:
                await self.keeper.keep()

        self._nursery.start_soon(renew)

    async def _let_go(self) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        await self.image.flush()
        self.image.sizes.keep_for = READER_CACHE_SECONDS
        if self._holding:
            self._holding = False
            try:
                await self.keeper.release()
                log.info("%s: lock released", self.settings.spec)
            except StoreError as exc:
                log.warning("could not release the lock of %s: %s", self.settings.spec, exc)

    # --- I/O -------------------------------------------------------------------------------

    def _writable(self, conn: Connection) -> None:
        if conn.readonly:
            raise WriteRefused(f"image {self.settings.spec} is served read-only here")

    async def pread(self, conn: Connection, offset: int, length: int) -> list[bytes | bytearray]:
        """The bytes as consecutive parts (see ``Image.read_parts``)."""
        with _Counted(self.stats, "pread", length):
            return await self.image.read_parts(offset, length)

    async def pwrite(self, conn: Connection, offset: int, data: bytes) -> None:
        with _Counted(self.stats, "pwrite", len(data)):
            self._writable(conn)
            await self.image.write(offset, data)

    async def zero(self, conn: Connection, offset: int, length: int, may_trim: bool) -> None:
        with _Counted(self.stats, "zero", length):
            self._writable(conn)
            await self.image.zero(offset, length, may_trim=may_trim)

    async def trim(self, conn: Connection, offset: int, length: int) -> None:
        with _Counted(self.stats, "trim", length):
            self._writable(conn)
            await self.image.trim(offset, length)

    async def flush(self, conn: Connection) -> None:
        with _Counted(self.stats, "flush", 0):
            await self.image.flush()

    async def extents(self, conn: Connection, offset: int, length: int) -> list[Extent]:
        with _Counted(self.stats, "extents", 0):
            return await self.image.extents(offset, length)


def _check_open(spec: str, header: ImageHeader) -> None:
    if header.removing:
        raise ImageBusy(f"image {spec} is being removed")
