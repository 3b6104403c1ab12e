"""Heartbeats between daemons that share PGs, and failure reports to the master.

Theory of operation
-------------------
Every heartbeat interval a daemon pings each up daemon it shares a PG with (a ``ping`` on
the peer link, answered by the peer's event loop, so a daemon that is stopped, wedged or cut
off fails it even while the TCP connection stays open). A peer that has not answered for
``peer_grace`` seconds is reported to the master, again every interval while it stays
silent; when it answers again the report is withdrawn. The master decides (see
``store.master.failures``): one reporter alone cannot take a peer down.

``PeerWatch`` is the bookkeeping, free of I/O; ``run_peer_heartbeats`` is the trio loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from store.errors import StoreError
from store.rpc import ConnectionLost

if TYPE_CHECKING:
    from store.osd.daemon import OsdDaemon

log = logging.getLogger("store.osd")


@dataclass
class PeerWatch:
    grace: float
    last_ok: dict[int, float] = field(default_factory=dict)  # peer -> last answer (or start)
    reported: set[int] = field(default_factory=set)  # peers we told the master are silent

    def set_peers(self, peers: Iterable[int], now: float) -> list[int]:
        """The peers to watch now. A new one starts with a full grace; returns the peers
        no longer watched that we had reported (their reports are to be withdrawn)."""
        wanted = set(peers)
        for peer in wanted - set(self.last_ok):
            self.last_ok[peer] = now
        gone = set(self.last_ok) - wanted
        for peer in gone:
            del self.last_ok[peer]
        dropped = sorted(gone & self.reported)
        self.reported -= gone
        return dropped

    def answered(self, peer: int, now: float) -> bool:
        """A ping was answered; True if the peer had been reported (withdraw it)."""
        if peer in self.last_ok:
            self.last_ok[peer] = max(self.last_ok[peer], now)
        if peer in self.reported:
            self.reported.discard(peer)
            return True
        return False

    def silent(self, now: float) -> dict[int, float]:
        """Peers silent for longer than the grace, with for how long; marks them reported."""
        found = {peer: now - last for peer, last in self.last_ok.items() if now - last > self.grace}
        self.reported |= set(found)
        return found


def shared_peers(daemon: OsdDaemon) -> set[int]:
    """Up daemons that are in an acting set with us."""
    m = daemon.map
    peers: set[int] = set()
    for pgobj in daemon.pgs.values():
        if daemon.osd_id in pgobj.acting:
            peers.update(pgobj.acting)
    return {p for p in peers if p != daemon.osd_id and p in m.osds and m.osds[p].up}


async def run_peer_heartbeats(
    daemon: OsdDaemon, clock: Callable[[], float] = trio.current_time
) -> None:
    config = daemon.config
    watch = PeerWatch(config.peer_grace)
    pinging: set[int] = set()
    interval = config.heartbeat_interval
    ttl = 4 * interval + 2.0  # the master forgets a report we stop repeating after this

    async def ping(peer: int) -> None:
        try:
            with trio.move_on_after(config.peer_grace):
                conn = await daemon.peer(peer)
                await conn.call("ping", {"from": daemon.osd_id}, timeout=config.peer_grace)
                if watch.answered(peer, clock()):
                    log.info("peer osd.%d answers again; withdrawing our report", peer)
                    await tell_master({"target": peer, "alive": True})
        except (StoreError, OSError) as exc:
            log.debug("ping of osd.%d failed: %s", peer, exc)
        finally:
            pinging.discard(peer)

    async def tell_master(args: dict[str, Any]) -> None:
        master = daemon.master
        if master is None or master.closed.is_set():
            return
        try:
            await master.call("osd_failure", args, timeout=interval * 2)
        except (StoreError, ConnectionLost) as exc:
            log.debug("failure report to the master failed: %s", exc)

    async with trio.open_nursery() as nursery:
        while True:
            await trio.sleep(interval)
            now = clock()
            for peer in watch.set_peers(shared_peers(daemon), now):
                nursery.start_soon(tell_master, {"target": peer, "alive": True})
            for peer in watch.last_ok:
                if peer not in pinging:
                    pinging.add(peer)
                    nursery.start_soon(ping, peer)
            already = set(watch.reported)
            for peer, silent_for in watch.silent(now).items():
                log.log(
                    logging.DEBUG if peer in already else logging.WARNING,
                    "peer osd.%d silent for %.1fs; reporting it to the master",
                    peer,
                    silent_for,
                )
                nursery.start_soon(
                    tell_master, {"target": peer, "silent_for": silent_for, "ttl": ttl}
                )
