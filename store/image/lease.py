"""Holding the lock of an image while writing it: take, renew in the background, release.

The lease is renewed every third of its length. A writer stops writing (``check``
raises LockLost) as soon as it cannot be sure the lock is still its own: when a renewal
finds someone else's lock (it was broken and taken), or when its own lease has run out
by its local clock because renewals did not get through. Another writer may take an
expired lock, so writing past that point could interleave two writers' data; refusing is
what keeps a filesystem on the image whole. A renewal that gets through later, with the
lock still ours, lets writes resume (nobody else can have held it meanwhile: their holder
id would be in the header). A lock found broken is final: this writer never writes again,
since what it has cached (a mounted filesystem's view, say) may be stale.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

import trio

from store.client.api import Client
from store.errors import StoreError
from store.image import header as headers
from store.image import lock as locks
from store.image.errors import ImageBusy, LockLost
from store.image.model import ImageHeader

log = logging.getLogger("store.image")


def default_owner(client_name: str, what: str = "") -> str:
    """How a lock names its holder to people: key, host, process."""
    where = f"client.{client_name} on {socket.gethostname()} pid {os.getpid()}"
    return f"{what} ({where})" if what else where


class LeaseKeeper:
    def __init__(
        self,
        client: Client,
        pool: str,
        image_id: str,
        what: str,
        *,
        owner: str,
        lease: float = locks.DEFAULT_LEASE,
    ) -> None:
        self.client = client
        self.pool = pool
        self.image_id = image_id
        self.what = what
        self.owner = owner
        self.lease = locks.check_lease(lease)
        self.holder = secrets.token_hex(8)
        self.header: ImageHeader | None = None
        self._valid_until = -float("inf")  # trio clock
        self._lost: LockLost | None = None

    @property
    def interval(self) -> float:
        return self.lease / 3

    def check(self) -> None:
        """Raise LockLost unless this writer may write now."""
        if self._lost is not None:
            raise self._lost
        if trio.current_time() >= self._valid_until:
            raise LockLost(
                f"the lease on image {self.what} ran out: the cluster did not answer its "
                "renewals in time, so another writer may have taken the image"
            )

    async def acquire(self) -> ImageHeader:
        """Take the lock (raises ImageBusy naming the holder); the lease starts now."""

        if self._lost is not None:
            raise LockLost(f"{self._lost}; restart the writer to take the image again")

        def take(h: ImageHeader) -> ImageHeader:
            if h.removing:
                raise ImageBusy(f"image {self.what} is being removed")
            lock = locks.acquire(
                h.lock,
                self.what,
                holder=self.holder,
                owner=self.owner,
                now=time.time(),
                lease=self.lease,
            )
            return h.with_lock(lock)

        return await self._update(take)

    async def renew(self) -> ImageHeader:
        """Extend the lease (raises LockLost if the lock is no longer ours)."""

        def extend(h: ImageHeader) -> ImageHeader:
            lock = locks.renew(
                h.lock, self.what, holder=self.holder, now=time.time(), lease=self.lease
            )
            return h.with_lock(lock)

        try:
            # A renewal that has not got through by half the lease is given up and tried
            # again, while the lease still runs.
            return await self._update(extend, timeout=self.lease / 2)
        except LockLost as exc:
            self._lost = exc
            raise

    async def release(self) -> None:
        self._valid_until = -float("inf")

        def give_up(h: ImageHeader) -> ImageHeader:
            return h.with_lock(locks.release(h.lock, holder=self.holder))

        await headers.update_header(self.client, self.pool, self.image_id, self.what, give_up)

    async def _update(
        self, change: Callable[[ImageHeader], ImageHeader], timeout: float | None = None
    ) -> ImageHeader:
        started = trio.current_time()
        header = await headers.update_header(
            self.client, self.pool, self.image_id, self.what, change, timeout=timeout
        )
        # The lease written ends `lease` after a moment later than `started`.
        self._valid_until = started + self.lease
        self.header = header
        return header

    async def keep(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew until cancelled (or until the lock turns out to be someone else's)."""
        task_status.started()
        next_renewal = trio.current_time() + self.interval
        while True:
            await trio.sleep_until(next_renewal)
            try:
                await self.renew()
                next_renewal = trio.current_time() + self.interval
            except LockLost as exc:
                log.error("%s; writes to %s are refused from now on", exc, self.what)
                return
            except (StoreError, OSError) as exc:
                log.warning("could not renew the lease on image %s: %s", self.what, exc)
                next_renewal = trio.current_time() + min(1.0, self.interval)
