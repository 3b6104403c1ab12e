"""A client's connection to the master: authentication, tickets and the map.

The client proves its key (challenge-response), receives a ticket and its session key,
subscribes to maps and keeps both fresh: the map arrives as ``map`` events on every new
epoch, and the ticket is renewed when two thirds of its life are gone. When the connection
drops (the master restarted), a subscribed link connects again, with backoff, proves its key
again and subscribes again, so a long-lived client never stays on an old map.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import trio

from store import auth
from store.client.config import ClientConfig
from store.errors import AuthError, Code, RemoteError, StoreError
from store.placement import ClusterMap
from store.rpc import ConnectionLost, RpcConnection, parse_hostport
from store.tls import client_context

log = logging.getLogger("store.client")


@dataclass(frozen=True)
class Credentials:
    ticket: bytes
    session_key: bytes
    expires: float
    caps: auth.Caps


class MasterUnreachable(StoreError):
    pass


class MasterLink:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.conn: RpcConnection | None = None
        self.map: ClusterMap | None = None
        self.credentials: Credentials | None = None
        self._map_changed = trio.Event()

    @classmethod
    async def open(
        cls, config: ClientConfig, nursery: trio.Nursery, subscribe: bool = True
    ) -> MasterLink:
        link = cls(config)
        await link._connect(nursery)
        await link.authenticate()
        if subscribe:
            await link._subscribe()
            nursery.start_soon(link._renew_tickets)
            nursery.start_soon(link._stay_connected, nursery)
        return link

    async def _subscribe(self) -> None:
        result = await self.call("subscribe")
        self._set_map(ClusterMap.from_wire(result["map"]))

    async def _stay_connected(self, nursery: trio.Nursery) -> None:
        while True:
            assert self.conn is not None
            await self.conn.closed.wait()
            log.warning("lost the master at %s; connecting again", self.config.master)
            delay = 0.2
            while True:
                await trio.sleep(delay)
                try:
                    await self._connect(nursery)
                    await self.authenticate()
                    await self._subscribe()
                    break
                except (StoreError, OSError) as exc:
                    log.debug("the master at %s: %s", self.config.master, exc)
                    delay = min(delay * 2, 5.0)
            log.info("the master is back (map epoch %d)", self.map.epoch if self.map else 0)

    async def _connect(self, nursery: trio.Nursery) -> None:
        host, port = parse_hostport(self.config.master)
        context = client_context(self.config.ca)
        try:
            with trio.fail_after(self.config.timeout):
                tcp = await trio.open_tcp_stream(host, port)
                stream = trio.SSLStream(tcp, context, server_hostname=host)
                await stream.do_handshake()
        except (OSError, trio.BrokenResourceError) as exc:
            raise MasterUnreachable(
                f"cannot reach the master at {self.config.master}: {exc.__cause__ or exc}"
            ) from None
        except trio.TooSlowError:
            raise MasterUnreachable(f"the master at {self.config.master} did not answer") from None
        self.conn = RpcConnection(stream, on_event=self._on_event, name="master")
        nursery.start_soon(self.conn.run)

    async def authenticate(self) -> Credentials:
        name = self.config.name
        challenge = (await self.call("auth_challenge", {"name": name}))["challenge"]
        nonce = os.urandom(16)
        proof = auth.client_proof(self.config.secret, name, challenge, nonce)
        try:
            result = await self.call(
                "auth_prove", {"name": name, "client_nonce": nonce, "proof": proof}
            )
        except RemoteError as exc:
            if exc.code == Code.EAUTH:
                raise AuthError(f"{exc.message} (check the key file of {name!r})") from None
            raise
        sealed = auth.open_for_client(self.config.secret, result["sealed"])
        self.credentials = Credentials(
            ticket=result["ticket"],
            session_key=sealed["session_key"],
            expires=float(sealed["expires"]),
            caps=auth.Caps.from_wire(result["caps"]),
        )
        return self.credentials

    async def call(
        self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> Any:
        if self.conn is None:
            raise MasterUnreachable("not connected to the master")
        try:
            return await self.conn.call(op, args, timeout=timeout or self.config.timeout)
        except ConnectionLost as exc:
            raise MasterUnreachable(f"lost the master at {self.config.master}: {exc}") from None

    async def refresh_map(self, min_epoch: int = 0) -> ClusterMap:
        """Return a map at least as new as `min_epoch`, waiting briefly for a push."""
        if self.map is not None and self.map.epoch >= min_epoch:
            return self.map
        result = await self.call("get_map")
        self._set_map(ClusterMap.from_wire(result["map"]))
        assert self.map is not None
        return self.map

    async def wait_for_map_change(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            await self._map_changed.wait()

    def _set_map(self, new: ClusterMap) -> None:
        if self.map is None or new.epoch > self.map.epoch:
            self.map = new
            self._map_changed.set()
            self._map_changed = trio.Event()

    def _on_event(self, name: str, args: dict[str, Any]) -> None:
        if name == "map":
            self._set_map(ClusterMap.from_wire(args["map"]))

    async def _renew_tickets(self) -> None:
        while True:
            assert self.credentials is not None
            life = self.credentials.expires - time.time()
            await trio.sleep(max(1.0, life * 2 / 3))
            try:
                await self.authenticate()
                log.debug("ticket renewed")
            except (StoreError, OSError) as exc:
                log.warning("could not renew the ticket: %s", exc)
                await trio.sleep(5)

    async def aclose(self) -> None:
        if self.conn is not None:
            await self.conn.aclose()
