"""A daemon told to listen on port 0 takes the kernel's UDP port and the TCP port of the
same number; when a TCP connection holds that number, it picks another pair."""

from __future__ import annotations

import errno
import socket
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from store.osd import daemon as osd_daemon


def stub(listen: str, peer_listen: str | None = None) -> Any:
    return SimpleNamespace(
        config=SimpleNamespace(listen=listen, peer_listen=peer_listen),
        udp_address=None,
        peer_address=None,
    )


async def test_a_port_taken_by_tcp_makes_the_daemon_pick_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = trio.open_tcp_listeners
    refused: list[int] = []

    async def busy_twice(port: int, *, host: str) -> list[trio.SocketListener]:
        if len(refused) < 2:
            refused.append(port)
            raise OSError(errno.EADDRINUSE, "Address already in use")
        return await real(port, host=host)

    monkeypatch.setattr(osd_daemon.trio, "open_tcp_listeners", busy_twice)
    daemon = stub("127.0.0.1:0")
    udp, listeners = await osd_daemon.OsdDaemon._bind(daemon)
    try:
        assert len(refused) == 2
        assert daemon.udp_address[1] == daemon.peer_address[1] == udp.getsockname()[1]
    finally:
        udp.close()
        for listener in listeners:
            await listener.aclose()


async def test_a_port_given_is_not_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as holder:  # a TCP listener on the number we ask for
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(OSError) as caught:
            await osd_daemon.OsdDaemon._bind(stub(f"127.0.0.1:{port}"))
        assert caught.value.errno == errno.EADDRINUSE
