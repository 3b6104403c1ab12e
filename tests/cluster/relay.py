"""A lossy UDP relay: stands between clients and one daemon and loses datagrams on purpose.

Theory of operation
-------------------
The relay listens on a loopback port (its "front") that the daemon advertises to clients, and
forwards to the daemon's real port, NAT-style: every client address gets its own upstream
socket, so the daemon's replies arrive on that socket and go back to the client they belong
to. Each datagram, in either direction, is lost with probability `loss`, decided by a seeded
`random.Random`; what is not lost is forwarded unchanged and at once.

The front socket is bound when the relay is made, so its port can be given to the daemon
(`--advertise`) before the relay runs; datagrams that arrive earlier wait in the socket.
`run()` is a trio task: start it with `nursery.start(relay.run)` and cancel it to stop;
every socket it made is closed on the way out.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

import trio

from store.client.udp import tune_buffers

Address = tuple[str, int]
BUFFER_BYTES = 8 * 1024 * 1024  # a window of 64 datagrams of 64 KB fits without loss
MAX_DATAGRAM = 65535


@dataclass
class RelayStats:
    to_daemon: int = 0  # forwarded
    to_client: int = 0
    lost_to_daemon: int = 0  # lost on purpose
    lost_to_client: int = 0
    send_errors: int = 0  # e.g. the daemon's port refused (ICMP), counted and ignored


class LossyRelay:
    def __init__(
        self,
        daemon: Address,
        *,
        loss: float,
        rng: random.Random,
        host: str = "127.0.0.1",
    ) -> None:
        if not 0.0 <= loss < 1.0:
            raise ValueError("loss is a probability below 1")
        self.daemon = daemon
        self.loss = loss
        self.rng = rng
        self.stats = RelayStats()
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tune_buffers(self._front, BUFFER_BYTES)
        self._front.bind((host, 0))
        self.address: Address = self._front.getsockname()[:2]

    @property
    def port(self) -> int:
        return self.address[1]

    def close(self) -> None:
        """Close the front socket, for a relay that never ran (`run()` closes its own)."""
        self._front.close()

    def _lost(self) -> bool:
        return self.rng.random() < self.loss

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        front = trio.socket.from_stdlib_socket(self._front)
        upstreams: dict[Address, trio.socket.SocketType] = {}
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    data, client = await front.recvfrom(MAX_DATAGRAM)
                    upstream = upstreams.get(client)
                    if upstream is None:
                        upstream = upstreams[client] = await self._open_upstream()
                        nursery.start_soon(self._replies, upstream, front, client)
                    if self._lost():
                        self.stats.lost_to_daemon += 1
                        continue
                    try:
                        await upstream.send(data)
                    except OSError:
                        self.stats.send_errors += 1
                        continue
                    self.stats.to_daemon += 1
        finally:
            for upstream in upstreams.values():
                upstream.close()
            front.close()

    async def _open_upstream(self) -> trio.socket.SocketType:
        upstream = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tune_buffers(upstream, BUFFER_BYTES)
        await upstream.bind((self.address[0], 0))
        await upstream.connect(self.daemon)  # and only the daemon's replies come back on it
        return upstream

    async def _replies(
        self, upstream: trio.socket.SocketType, front: trio.socket.SocketType, client: Address
    ) -> None:
        while True:
            try:
                data = await upstream.recv(MAX_DATAGRAM)
            except OSError:  # ECONNREFUSED from an earlier send to a port nobody held
                self.stats.send_errors += 1
                continue
            if self._lost():
                self.stats.lost_to_client += 1
                continue
            try:
                await front.sendto(data, client)
            except OSError:
                self.stats.send_errors += 1
                continue
            self.stats.to_client += 1
