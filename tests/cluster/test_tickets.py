"""Tickets expire and are renewed; service keys rotate; clients never notice."""

from __future__ import annotations

import trio

from store.client.api import Client
from tests.cluster.conftest import ClusterFactory


async def test_client_outlives_its_tickets_and_key_rotations(
    cluster_factory: ClusterFactory,
) -> None:
    # Tickets of 6 s and a new service key every 2 s: over 15 s of I/O the client renews its
    # ticket several times, its daemon sessions expire and are re-opened with new tickets,
    # and daemons open tickets sealed with older service key generations.
    cluster = cluster_factory(master_extra=["--ticket-ttl", "6", "--key-rotation", "2"])
    async with Client.connect(cluster.config()) as client:
        first_ticket = client.master.credentials
        assert first_ticket is not None
        end = trio.current_time() + 15
        i = 0
        while trio.current_time() < end:
            data = f"payload {i}".encode() * 50
            await client.write_full("default", f"t-{i % 20}", data)
            assert await client.read("default", f"t-{i % 20}") == data
            i += 1
            await trio.sleep(0.05)
        assert client.master.credentials is not None
        assert client.master.credentials.ticket != first_ticket.ticket
        assert client.transport.stats.resets > 0  # sessions expired and were re-opened
    assert "service key rotated" in cluster.log("master")
