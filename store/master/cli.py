"""`store master`."""

from __future__ import annotations

from pathlib import Path

import click

from store import configfile, logs
from store.master.server import MasterConfig, run_master


@click.command("master")
@configfile.config_option
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Where the master keeps its state.",
)
@click.option(
    "--listen", default="127.0.0.1:6789", show_default=True, help="HOST:PORT to serve on."
)
@click.option("--tls-dir", default="tls", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--osd-grace",
    default=20.0,
    show_default=True,
    help="Seconds without heartbeat before a daemon is marked down.",
)
@click.option(
    "--down-out-interval",
    default=600.0,
    show_default=True,
    type=click.FloatRange(0.0, None),
    help="Seconds a daemon may stay down before it is marked out and its data re-replicated "
    "(0: never automatically).",
)
@click.option(
    "--min-down-reporters",
    default=2,
    show_default=True,
    type=click.IntRange(1, None),
    help="Daemons that must report a peer silent before it is marked down before its grace.",
)
@click.option(
    "--ticket-ttl", default=3600.0, show_default=True, help="Lifetime of client tickets, seconds."
)
@click.option(
    "--key-rotation",
    default=3600.0,
    show_default=True,
    help="Seconds between service key rotations.",
)
@click.option(
    "--metrics",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus /metrics, /healthz, /readyz and /config here.",
)
@click.option(
    "--dashboard",
    default=None,
    metavar="HOST:PORT",
    help="Serve the web dashboard here (HTTPS with the master's certificate; admin login).",
)
@click.option("-v", "--verbose", count=True, help="-v: INFO (the default), -vv: DEBUG.")
@logs.format_option
def master_command(
    data_dir: Path,
    listen: str,
    tls_dir: Path,
    osd_grace: float,
    down_out_interval: float,
    min_down_reporters: int,
    ticket_ttl: float,
    key_rotation: float,
    metrics: str | None,
    dashboard: str | None,
    verbose: int,
    log_format: str,
) -> None:
    """Run the master: maps, pools, keys."""
    logs.setup(max(verbose, 1), "master", log_format)
    running = configfile.document(click.get_current_context(), "master")
    run_master(
        MasterConfig(
            data_dir=data_dir,
            listen=listen,
            tls_dir=tls_dir,
            osd_grace=osd_grace,
            down_out_interval=down_out_interval,
            min_down_reporters=min_down_reporters,
            ticket_ttl=ticket_ttl,
            key_rotation=key_rotation,
            metrics=metrics,
            dashboard=dashboard,
            running_config=running,
        )
    )
