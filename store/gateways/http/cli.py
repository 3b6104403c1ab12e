"""`store http serve`: the HTTP gateway's command line (the process is ``process.py``)."""

from __future__ import annotations

import functools
import ssl
from pathlib import Path

import click

from store import configfile, logs
from store.client.cli import client_options
from store.client.config import ClientConfig
from store.errors import ConfigError
from store.gateways import cli as gateway_cli
from store.gateways.http.access import AccessPolicy, load_tokens
from store.gateways.http.gateway import DEFAULT_MAX_OBJECT_SIZE
from store.gateways.http.process import GatewaySettings, run_gateway


def _ssl_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ConfigError("HTTPS needs both --tls-cert and --tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load {cert} with key {key}: {exc}") from None
    return context


@click.group("http")
def http_group() -> None:
    """The HTTP gateway: pool objects over plain HTTP(S)."""


@http_group.command("serve")
@configfile.config_option
@gateway_cli.listen_option("127.0.0.1:8080")
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Bearer tokens that may write (and read non-public pools), one a line.",
)
@click.option(
    "--public", multiple=True, metavar="POOL", help="A pool anyone may read (repeatable)."
)
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Serve HTTPS with this certificate chain.",
)
@click.option(
    "--tls-key", type=click.Path(path_type=Path, dir_okay=False), help="The key of --tls-cert."
)
@click.option(
    "--max-object-size",
    default=DEFAULT_MAX_OBJECT_SIZE,
    show_default=True,
    type=click.IntRange(min=0),
    help="Largest PUT accepted, bytes.",
)
@click.option(
    "--gc-interval",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds between passes removing unreferenced upload data.",
)
@click.option(
    "--upload-lease",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds an upload that stops making progress is kept before its data may be removed.",
)
@click.option(
    "--read-grace",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds replaced or deleted data is kept for reads already under way.",
)
@gateway_cli.metrics_option
@gateway_cli.workers_option
@logs.format_option
@client_options
def serve_command(
    config: ClientConfig,
    listen: str,
    token_file: Path | None,
    public: tuple[str, ...],
    tls_cert: Path | None,
    tls_key: Path | None,
    max_object_size: int,
    gc_interval: float,
    upload_lease: float,
    read_grace: float,
    metrics: str | None,
    workers: int,
    log_format: str,
) -> None:
    """Serve GET/HEAD/PUT/DELETE of /<pool>/<object> and listings of /<pool>/.

    Settings may come from a TOML file (`--config FILE`, keys are the long flag names)."""
    gateway_cli.setup_logging("http", log_format)
    host, _ = gateway_cli.host_port(listen, "--listen")
    gateway_cli.check_metrics(metrics)
    tokens = load_tokens(token_file) if token_file is not None else ()
    context = _ssl_context(tls_cert, tls_key)
    place = gateway_cli.place(workers, listen, metrics)
    if place is None:
        return  # this process ran the workers
    settings = GatewaySettings(
        host=host,
        port=place.port,
        worker=place.worker,
        policy=AccessPolicy(tokens, frozenset(public)),
        ssl_context=context,
        max_object_size=max_object_size,
        gc_interval=gc_interval,
        upload_lease=upload_lease,
        read_grace=read_grace,
        metrics=place.metrics,
        running_config=configfile.document(click.get_current_context(), "http"),
    )
    gateway_cli.run_until_interrupted(functools.partial(run_gateway, config, settings), listen)
