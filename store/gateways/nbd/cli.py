"""``store nbd plugin-path`` and ``store nbd serve``."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
from pathlib import Path

import click

from store import configfile, logs, threadsched
from store.client.config import config_path
from store.gateways import cli as gateway_cli
from store.gateways.nbd.launcher import ensure_launcher
from store.gateways.nbd.relay import DEFAULT_PORT, exec_behind_relay, listen
from store.gateways.nbd.settings import DOCUMENT_VARIABLE
from store.image.errors import ImageError
from store.image.model import parse_image_spec

NBDKIT_PACKAGES = "nbdkit nbdkit-plugin-python"


def nbdkit_command(
    plugin: Path,
    spec: str,
    *,
    conf: Path,
    unix: Path | None = None,
    port: int | None = None,
    bind: str | None = None,
    readonly: bool = False,
    client_name: str | None = None,
    keyring: Path | None = None,
    lease: float | None = None,
    timeout: float | None = None,
    metrics: str | None = None,
    log_format: str = "human",
    verbose: bool = False,
    parallel: bool = False,
    nbdkit: str = "nbdkit",
) -> list[str]:
    """The nbdkit command line that serves image ``spec`` in the foreground (on the
    socket it is handed, by socket activation, when given neither ``unix`` nor ``port``)."""
    args = [nbdkit, "--foreground"]
    if verbose:
        args.append("--verbose")
    if unix is not None:
        args += ["--unix", str(unix)]
    else:
        if port is not None:
            args += ["--port", str(port)]
        if bind is not None:
            args += ["--ipaddr", bind]
    if readonly:
        args.append("--readonly")
    args += ["python", str(plugin), f"image={spec}", f"conf={conf}"]
    if client_name is not None:
        args.append(f"name={client_name}")
    if keyring is not None:
        args.append(f"keyring={keyring}")
    if readonly:
        args.append("readonly=true")
    if lease is not None:
        args.append(f"lease={lease:g}")
    if timeout is not None:
        args.append(f"timeout={timeout:g}")
    if metrics is not None:
        args.append(f"metrics={metrics}")
    if log_format != "human":
        args.append(f"log-format={log_format}")
    if parallel:
        args.append("parallel=true")
    return args


def clear_stale_socket(path: Path) -> None:
    """Remove a Unix socket nobody listens on (left by an nbdkit that was killed)."""
    if not path.is_socket():
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            path.unlink(missing_ok=True)
            return
        except OSError:
            return
    raise click.ClickException(f"something already listens on {path}")


@click.group("nbd")
def nbd_group() -> None:
    """Serve images as block devices over NBD, with nbdkit."""


@nbd_group.command("plugin-path")
def plugin_path_command() -> None:
    """Print the path of the nbdkit plugin: `nbdkit python $(store nbd plugin-path) image=P/N`."""
    click.echo(ensure_launcher())


@nbd_group.command("serve")
@configfile.config_option
@click.argument("spec", metavar="POOL/NAME")
@click.option(
    "--unix", type=click.Path(dir_okay=False, path_type=Path), help="Listen on this Unix socket."
)
@click.option("--port", type=click.IntRange(1, 65535), help="Listen on this TCP port [10809].")
@click.option("--bind", default=None, help="With --port: listen on this address only.")
@click.option("--readonly", is_flag=True, help="Serve read-only; takes no lock.")
@click.option("--lease", type=float, default=None, help="Seconds of the writer's lease [30].")
@click.option(
    "--conf", envvar="STORE_CONF", type=click.Path(path_type=Path), help="Client configuration."
)
@click.option("--name", "client_name", default=None, help="Client name (must match the key).")
@click.option("--keyring", default=None, type=click.Path(path_type=Path), help="Key file.")
@click.option("--timeout", default=None, type=float, help="Seconds before a request fails.")
@gateway_cli.metrics_option
@click.option("-v", "--verbose", is_flag=True, help="nbdkit's debug log (every request).")
@logs.format_option
@click.option(
    "--no-relay",
    is_flag=True,
    help="Run nbdkit alone on the socket, one request at a time per connection.",
)
@click.option("--dry-run", is_flag=True, help="Print the nbdkit command instead of running it.")
def serve_command(
    spec: str,
    unix: Path | None,
    port: int | None,
    bind: str | None,
    readonly: bool,
    lease: float | None,
    conf: Path | None,
    client_name: str | None,
    keyring: Path | None,
    timeout: float | None,
    metrics: str | None,
    verbose: bool,
    log_format: str,
    no_relay: bool,
    dry_run: bool,
) -> None:
    """Serve image POOL/NAME with nbdkit, in the foreground (Ctrl-C stops it).

    Clients connect to a relay that hands their requests to nbdkit in whole NBD
    messages, which lets nbdkit serve each connection's requests in parallel: nbdkit
    1.32 can die of a client that leaves with requests in flight when they run in
    parallel and it faces the client itself. `--no-relay` runs nbdkit alone, serving
    one request at a time per connection.

    Settings may come from a TOML file (`--config FILE`, keys are the long flag names):
    `store nbd serve --config /etc/store/nbd/rbd-vm1.toml rbd/vm1`."""
    try:
        parse_image_spec(spec)
    except ImageError as exc:
        raise click.BadParameter(str(exc), param_hint="POOL/NAME") from None
    gateway_cli.check_metrics(metrics)
    if unix is not None and (port is not None or bind is not None):
        raise click.UsageError("give --unix or --port/--bind, not both")
    conf_file = config_path(conf).expanduser().resolve()
    if not conf_file.exists():
        raise click.ClickException(
            f"no client configuration at {conf_file}: pass --conf or set STORE_CONF"
        )
    nbdkit = shutil.which("nbdkit")
    if nbdkit is None and not dry_run:
        raise click.ClickException(f"nbdkit is not installed: apt-get install {NBDKIT_PACKAGES}")
    if unix is not None and not dry_run:
        clear_stale_socket(unix)
    unix_path = unix.resolve() if unix is not None else None
    relay = not no_relay
    args = nbdkit_command(
        ensure_launcher(),
        spec,
        conf=conf_file,
        unix=None if relay else unix_path,
        port=None if relay else port,
        bind=None if relay else bind,
        readonly=readonly,
        client_name=client_name,
        keyring=keyring.resolve() if keyring is not None else None,
        lease=lease,
        timeout=timeout,
        metrics=metrics,
        log_format=log_format,
        verbose=verbose,
        parallel=relay,
        nbdkit=nbdkit or "nbdkit",
    )
    if dry_run:
        if relay:
            where = f"unix {unix_path}" if unix_path else f"port {port or DEFAULT_PORT}"
            if bind is not None:
                where += f" on {bind}"
            click.echo(f"# clients connect to the relay ({where}); nbdkit serves the relay:")
            click.echo("# (its socket comes by socket activation: do not run it by hand)")
        click.echo(shlex.join(args))
        return
    # The plugin serves this at /config (`store config show --metrics`); nbdkit keeps
    # this process's id, so the document's pid stays right.
    document = configfile.document(click.get_current_context(), "nbd")
    os.environ[DOCUMENT_VARIABLE] = json.dumps(document, default=str)
    threadsched.run_as_batch()  # the relay and nbdkit, which inherit it
    if not relay:
        os.execv(args[0], args)
    try:
        public = listen(unix_path, port, bind)
    except OSError as exc:
        where = str(unix_path) if unix_path else f"{bind or '*'}:{port or DEFAULT_PORT}"
        raise click.ClickException(f"cannot listen on {where}: {exc.strerror or exc}") from None
    exec_behind_relay(args, public, unix_path, verbose=verbose, log_format=log_format)
