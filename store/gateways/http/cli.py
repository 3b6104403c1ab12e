"""`store http serve`: the HTTP gateway's command line (the process is ``process.py``)."""

from __future__ import annotations

import ssl
from pathlib import Path

import click
import trio

from store import configfile, logs
from store.client.cli import client_options
from store.client.config import ClientConfig
from store.errors import ConfigError, single_error
from store.gateways.http.access import AccessPolicy, load_tokens
from store.gateways.http.gateway import DEFAULT_MAX_OBJECT_SIZE
from store.gateways.http.process import GatewaySettings, run_gateway
from store.rpc import parse_hostport


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
@click.option(
    "--listen", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to serve on."
)
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
@click.option(
    "--metrics",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus /metrics, /healthz, /readyz and /config here.",
)
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
    log_format: str,
) -> None:
    """Serve GET/HEAD/PUT/DELETE of /<pool>/<object> and listings of /<pool>/.

    Settings may come from a TOML file (`--config FILE`, keys are the long flag names)."""
    ctx = click.get_current_context()
    logs.setup(max(int(ctx.params.get("verbose") or 0), 1), "http", log_format)
    try:
        host, port = parse_hostport(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    if metrics is not None:
        try:
            parse_hostport(metrics)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics") from None
    tokens = load_tokens(token_file) if token_file is not None else ()
    settings = GatewaySettings(
        host=host,
        port=port,
        policy=AccessPolicy(tokens, frozenset(public)),
        ssl_context=_ssl_context(tls_cert, tls_key),
        max_object_size=max_object_size,
        gc_interval=gc_interval,
        upload_lease=upload_lease,
        read_grace=read_grace,
        metrics=metrics,
        running_config=configfile.document(ctx, "http"),
    )
    try:
        trio.run(run_gateway, config, settings)
    except KeyboardInterrupt:
        pass
    except (OSError, BaseExceptionGroup) as exc:
        inner = single_error(exc)
        if isinstance(inner, OSError):
            raise click.ClickException(f"cannot serve on {listen}: {inner}") from None
        raise
