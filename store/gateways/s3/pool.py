"""The gateway's pool: found in the map, or created when the cluster has none of that name."""

from __future__ import annotations

import click

from store.client.api import Client
from store.errors import Code, RemoteError
from store.placement import UnknownPool


async def ensure_pool(client: Client, pool: str, size: int | None, pg_num: int) -> None:
    """Create the gateway's pool when the cluster has none of that name."""
    try:
        client.pool(pool)
        return
    except UnknownPool:
        pass
    if size is None:
        size = max(1, min(3, sum(1 for osd in client.map.osds.values() if osd.up)))
    try:
        result = await client.master.call(
            "pool_create", {"name": pool, "size": size, "pg_num": pg_num}
        )
    except RemoteError as exc:
        if exc.code != Code.EEXIST:
            raise click.ClickException(
                f"pool {pool!r} does not exist and could not be created ({exc}): create it "
                f"with `store pool create {pool}` or use a key with admin rights"
            ) from None
        result = {"epoch": 0}
    await client.master.refresh_map(int(result.get("epoch", 0)))
    while True:
        try:
            client.pool(pool)
            return
        except UnknownPool:
            await client.master.wait_for_map_change(1.0)
