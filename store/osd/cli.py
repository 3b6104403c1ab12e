"""`store osd` (and `store file-store`, the same daemon under its older flag names)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from store import configfile, logs
from store.osd.daemon import OsdConfig, run_osd
from store.tls import TlsPaths

F = TypeVar("F", bound=Callable[..., Any])


def _run(config: OsdConfig, verbose: int, log_format: str) -> None:
    logs.setup(max(verbose, 1), f"osd:{config.dir.name}", log_format)
    config.running_config = configfile.document(click.get_current_context(), "osd")
    run_osd(config)


def _operations(fn: F) -> F:
    """The settings both spellings of the daemon share."""
    for option in reversed(
        [
            click.option(
                "--metrics",
                default=None,
                metavar="HOST:PORT",
                help="Serve Prometheus /metrics, /healthz, /readyz and /config here.",
            ),
            click.option(
                "--full-ratio",
                default=0.95,
                show_default=True,
                type=click.FloatRange(0.0, 1.0, min_open=True),
                help="Refuse writes above this fraction of the disk in use.",
            ),
            click.option(
                "--nearfull-ratio",
                default=0.85,
                show_default=True,
                type=click.FloatRange(0.0, 1.0, min_open=True),
                help="Warn (store status) above this fraction of the disk in use.",
            ),
            click.option(
                "--pg-log-entries",
                default=3000,
                show_default=True,
                type=click.IntRange(1, 1_000_000),
                help="Writes each PG remembers: a daemon that missed fewer catches up from the "
                "log, one that missed more is backfilled.",
            ),
            click.option(
                "--peer-grace",
                default=20.0,
                show_default=True,
                type=click.FloatRange(0.5, None),
                help="Seconds a peer sharing PGs may be silent before it is reported down.",
            ),
            click.option(
                "--max-backfills",
                default=1,
                show_default=True,
                type=click.IntRange(1, 64),
                help="PG recoveries this daemon runs at once, as a source or a target.",
            ),
            click.option(
                "--recovery-max-rate",
                default=0.0,
                show_default=True,
                type=click.FloatRange(0.0, None),
                help="MB/s of recovery traffic this daemon sends (0: no limit).",
            ),
            click.option(
                "--scrub-interval",
                default=86400.0,
                show_default=True,
                type=click.FloatRange(0.0, None),
                help="Seconds between light scrubs of each PG (0: only on demand).",
            ),
            click.option(
                "--deep-scrub-interval",
                default=604800.0,
                show_default=True,
                type=click.FloatRange(0.0, None),
                help="Seconds between deep scrubs of each PG (0: only on demand).",
            ),
            click.option(
                "--scrub-auto-repair/--no-scrub-auto-repair",
                default=True,
                show_default=True,
                help="Repair the bad copies any scrub finds (off: only `store pg repair` does).",
            ),
            click.option("-v", "--verbose", count=True, help="-v: INFO (the default), -vv: DEBUG."),
            logs.format_option,
        ]
    ):
        fn = option(fn)
    return fn


def _settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The shared settings as OsdConfig fields, checked."""
    full_ratio, nearfull_ratio = settings["full_ratio"], settings["nearfull_ratio"]
    if nearfull_ratio > full_ratio:
        raise click.UsageError(
            f"--nearfull-ratio ({nearfull_ratio}) must not be above --full-ratio ({full_ratio})"
        )
    return {k: v for k, v in settings.items() if k not in ("verbose", "log_format")}


@click.group("osd", invoke_without_command=True)
@configfile.config_option
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    help="The disk: an empty directory on first start.",
)
@click.option("--master", help="HOST:PORT of the master.")
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    help="UDP HOST:PORT for clients (TCP for peers on the same port unless --peer-listen).",
)
@click.option("--peer-listen", default=None, help="TCP HOST:PORT for peers.")
@click.option(
    "--advertise", default=None, help="HOST:PORT clients are told (behind NAT, in containers)."
)
@click.option("--advertise-peer", default=None, help="HOST:PORT peers are told.")
@click.option(
    "--host",
    default=socket.gethostname(),
    show_default=True,
    help="Failure domain: replicas go to different hosts.",
)
@click.option("--tls-dir", default="tls", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--cert-name", default="osd", show_default=True, help="Use TLS_DIR/NAME.crt and NAME.key."
)
@click.option(
    "--heartbeat", default=2.0, show_default=True, help="Seconds between heartbeats to the master."
)
@_operations
@click.pass_context
def osd_group(
    ctx: click.Context,
    directory: Path | None,
    master: str | None,
    listen: str,
    peer_listen: str | None,
    advertise: str | None,
    advertise_peer: str | None,
    host: str,
    tls_dir: Path,
    cert_name: str,
    heartbeat: float,
    **settings: Any,
) -> None:
    """Run a storage daemon for one disk (`store osd --dir D --master M`), or manage
    daemons (`store osd ls|out|in|reweight`)."""
    if ctx.invoked_subcommand is not None:
        return
    if directory is None or master is None:
        raise click.UsageError("running a daemon needs --dir DIR and --master HOST:PORT")
    _run(
        OsdConfig(
            dir=directory,
            master=master,
            listen=listen,
            peer_listen=peer_listen,
            advertise=advertise,
            advertise_peer=advertise_peer,
            host=host,
            tls=TlsPaths.in_dir(tls_dir, cert_name),
            heartbeat_interval=heartbeat,
            **_settings(settings),
        ),
        settings["verbose"],
        settings["log_format"],
    )


@click.command("file-store")
@configfile.config_option
@click.option("--dir", "directory", required=True, type=click.Path(path_type=Path))
@click.option("--master", required=True, help="HOST:PORT of the master.")
@click.option("--listen-address", required=True, help="UDP HOST:PORT for clients.")
@click.option("--peer-address", required=True, help="TCP HOST:PORT for peers.")
@click.option("--peer-cert", required=True, type=click.Path(path_type=Path))
@click.option("--peer-key", required=True, type=click.Path(path_type=Path))
@click.option("--peer-ca-cert", required=True, type=click.Path(path_type=Path))
@click.option("--advertise", default=None)
@click.option("--host", default=socket.gethostname(), show_default=True)
@_operations
def file_store_command(
    directory: Path,
    master: str,
    listen_address: str,
    peer_address: str,
    peer_cert: Path,
    peer_key: Path,
    peer_ca_cert: Path,
    advertise: str | None,
    host: str,
    **settings: Any,
) -> None:
    """Run a storage daemon (same as `store osd`, older flag names)."""
    _run(
        OsdConfig(
            dir=directory,
            master=master,
            listen=listen_address,
            peer_listen=peer_address,
            advertise=advertise,
            host=host,
            tls=TlsPaths(ca=peer_ca_cert, cert=peer_cert, key=peer_key),
            **_settings(settings),
        ),
        settings["verbose"],
        settings["log_format"],
    )
