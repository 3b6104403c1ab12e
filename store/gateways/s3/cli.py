"""``store s3 ...``: run the gateway (the process is ``process.py``), manage S3 users and
keys, collect garbage."""

from __future__ import annotations

import functools
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from store import configfile, logs
from store.client.api import Client
from store.client.cli import client_options, with_client
from store.client.config import ClientConfig
from store.gateways import cli as gateway_cli
from store.gateways.s3.backend import Backend
from store.gateways.s3.gateway import Settings
from store.gateways.s3.layout import DEFAULT_INDEX_SHARDS
from store.gateways.s3.pool import ensure_pool
from store.gateways.s3.process import GatewaySettings, run_gateway
from store.gateways.s3.users import UserError, Users

log = logging.getLogger("store.s3")
T = TypeVar("T")


def pool_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--pool-pg-num",
        default=64,
        show_default=True,
        help="Placement groups of the pool, when it has to be created.",
    )(fn)
    fn = click.option(
        "--pool-size",
        default=None,
        type=int,
        help="Replicas of the pool, when it has to be created (default: 3, or fewer daemons).",
    )(fn)
    return click.option(
        "--pool",
        default="s3",
        show_default=True,
        help="The pool that holds users, buckets and objects (created if missing).",
    )(fn)


def run_with_pool(
    config: ClientConfig,
    pool: str,
    size: int | None,
    pg_num: int,
    fn: Callable[[Backend], Awaitable[T]],
) -> T:
    async def main(client: Client) -> T:
        await ensure_pool(client, pool, size, pg_num)
        return await fn(Backend(client, pool))

    try:
        return with_client(config, main)
    except UserError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("s3")
def s3_group() -> None:
    """The S3 gateway and its users."""


@s3_group.command("serve")
@configfile.config_option
@gateway_cli.listen_option("127.0.0.1:7480")
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, path_type=Path),
    help="Serve HTTPS with this certificate (PEM).",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, path_type=Path),
    help="The certificate's private key (PEM).",
)
@click.option(
    "--region", default="us-east-1", show_default=True, help="The region clients sign for."
)
@click.option(
    "--domain",
    "domains",
    multiple=True,
    help="Serve virtual-host-style requests for BUCKET.DOMAIN (repeatable).",
)
@click.option(
    "--index-shards",
    default=DEFAULT_INDEX_SHARDS,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Index shards of new buckets.",
)
@click.option(
    "--gc-delay",
    default=300.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds before overwritten or deleted data is freed.",
)
@gateway_cli.metrics_option
@gateway_cli.workers_option
@logs.format_option
@pool_option
@client_options
def serve_command(
    config: ClientConfig,
    listen: str,
    tls_cert: Path | None,
    tls_key: Path | None,
    region: str,
    domains: tuple[str, ...],
    index_shards: int,
    gc_delay: float,
    metrics: str | None,
    workers: int,
    log_format: str,
    pool: str,
    pool_size: int | None,
    pool_pg_num: int,
) -> None:
    """Serve the S3 API on HOST:PORT.

    Settings may come from a TOML file (`--config FILE`, keys are the long flag names)."""
    gateway_cli.setup_logging("s3", log_format)
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    host, _ = gateway_cli.host_port(listen, "--listen")
    gateway_cli.check_metrics(metrics)
    context = None
    if tls_cert is not None and tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(tls_cert), str(tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise click.ClickException(f"cannot load {tls_cert} and {tls_key}: {exc}") from None
    place = gateway_cli.place(workers, listen, metrics)
    if place is None:
        return  # this process ran the workers
    settings = GatewaySettings(
        host=host,
        port=place.port,
        worker=place.worker,
        ssl_context=context,
        pool=pool,
        pool_size=pool_size,
        pool_pg_num=pool_pg_num,
        gateway=Settings(
            region=region,
            domains=tuple(d.lower().strip(".") for d in domains),
            index_shards=index_shards,
            gc_delay=gc_delay,
        ),
        metrics=place.metrics,
        running_config=configfile.document(click.get_current_context(), "s3"),
    )
    gateway_cli.run_until_interrupted(functools.partial(run_gateway, config, settings), listen)


# --- users and keys -------------------------------------------------------------------------


@s3_group.group("user")
def user_group() -> None:
    """S3 users (they live in the cluster)."""


@user_group.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pool_option
@client_options
def user_create(
    config: ClientConfig,
    name: str,
    as_json: bool,
    pool: str,
    pool_size: int | None,
    pool_pg_num: int,
) -> None:
    """Create user NAME and print its first access key and secret."""

    async def create(backend: Backend) -> Any:
        return await Users(backend).create(name)

    user, key = run_with_pool(config, pool, pool_size, pool_pg_num, create)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "user": user.name,
                    "id": user.id,
                    "access_key": key.access_key,
                    "secret_key": key.secret,
                }
            )
        )
    else:
        click.echo(f"user:       {user.name}\nid:         {user.id}")
        click.echo(f"access key: {key.access_key}\nsecret key: {key.secret}")


@user_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pool_option
@client_options
def user_ls(
    config: ClientConfig, as_json: bool, pool: str, pool_size: int | None, pool_pg_num: int
) -> None:
    """List users and their access keys (not their secrets)."""

    async def listing(backend: Backend) -> Any:
        return await Users(backend).all()

    users = run_with_pool(config, pool, pool_size, pool_pg_num, listing)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "user": u.name,
                        "id": u.id,
                        "created": u.created,
                        "access_keys": [k.access_key for k in keys],
                    }
                    for u, keys in users
                ]
            )
        )
        return
    for user, keys in users:
        click.echo(f"{user.name}\t{' '.join(k.access_key for k in keys)}")


@user_group.command("rm")
@click.argument("name")
@pool_option
@client_options
def user_rm(
    config: ClientConfig, name: str, pool: str, pool_size: int | None, pool_pg_num: int
) -> None:
    """Remove user NAME and its keys (it must own no bucket)."""
    from store.gateways.s3.buckets import Buckets

    async def remove(backend: Backend) -> None:
        owned = [b.name for b in await Buckets(backend).all() if b.owner == name]
        await Users(backend).remove(name, owned)

    run_with_pool(config, pool, pool_size, pool_pg_num, remove)
    click.echo(f"user {name} removed")


@s3_group.group("key")
def key_group() -> None:
    """Access keys of S3 users."""


@key_group.command("add")
@click.argument("user")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pool_option
@client_options
def key_add(
    config: ClientConfig,
    user: str,
    as_json: bool,
    pool: str,
    pool_size: int | None,
    pool_pg_num: int,
) -> None:
    """Give USER another access key."""

    async def add(backend: Backend) -> Any:
        return await Users(backend).add_key(user)

    key = run_with_pool(config, pool, pool_size, pool_pg_num, add)
    if as_json:
        click.echo(
            json.dumps({"user": user, "access_key": key.access_key, "secret_key": key.secret})
        )
    else:
        click.echo(f"access key: {key.access_key}\nsecret key: {key.secret}")


@key_group.command("rm")
@click.argument("access_key")
@pool_option
@client_options
def key_rm(
    config: ClientConfig, access_key: str, pool: str, pool_size: int | None, pool_pg_num: int
) -> None:
    """Remove an access key (running gateways stop accepting it within seconds)."""

    async def remove(backend: Backend) -> str:
        return await Users(backend).remove_key(access_key)

    owner = run_with_pool(config, pool, pool_size, pool_pg_num, remove)
    click.echo(f"access key {access_key} of user {owner} removed")


# --- garbage --------------------------------------------------------------------------------


@s3_group.command("gc")
@click.option("--now", "everything", is_flag=True, help="Free queued data even before its delay.")
@click.option("--orphans", is_flag=True, help="Also find and delete unreferenced data objects.")
@click.option(
    "--min-age",
    default=86400.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Orphans younger than this many seconds are kept (uploads may be in progress).",
)
@click.option("--dry-run", is_flag=True, help="With --orphans: list them, delete nothing.")
@pool_option
@client_options
def gc_command(
    config: ClientConfig,
    everything: bool,
    orphans: bool,
    min_age: float,
    dry_run: bool,
    pool: str,
    pool_size: int | None,
    pool_pg_num: int,
) -> None:
    """Free the data of overwritten and deleted objects now (and orphans)."""
    from store.gateways.s3.gc import Collector
    from store.gateways.s3.sweep import find_orphans

    async def collect(backend: Backend) -> tuple[int, list[tuple[str, int]]]:
        collector = Collector(backend)
        done = await collector.collect_once(now=time.time() + 1e9 if everything else None)
        found: list[tuple[str, int]] = []
        if orphans:
            found = await find_orphans(backend, min_age)
            if not dry_run:
                for name, _ in found:
                    await backend.delete(name)
        return done, found

    done, found = run_with_pool(config, pool, pool_size, pool_pg_num, collect)
    click.echo(f"{done} queued entries freed")
    if orphans:
        verb = "found" if dry_run else "deleted"
        click.echo(f"{len(found)} orphan data objects {verb} ({sum(s for _, s in found)} bytes)")
        for name, size in found:
            click.echo(f"  {name}\t{size}")
