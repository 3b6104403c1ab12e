"""What the gateways' ``serve`` commands share: the ``--listen``, ``--metrics`` and
``--workers`` options, HOST:PORT values checked as the flag that gave them, a gateway's log
level, and running a gateway process until Ctrl-C with its errors said the way an operator
wants them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import trio

from store import logs, threadsched
from store.errors import single_error
from store.gateways import workers as gateway_workers
from store.rpc import parse_hostport

F = TypeVar("F", bound=Callable[..., Any])


def listen_option(default: str) -> Callable[[F], F]:
    """``--listen HOST:PORT``, the address a gateway serves on."""
    return click.option(
        "--listen", default=default, show_default=True, help="HOST:PORT to serve on."
    )


def metrics_option(fn: F) -> F:
    """``--metrics HOST:PORT``, the gateway's metrics port (none without it)."""
    return click.option(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="Serve Prometheus /metrics, /healthz, /readyz and /config here.",
    )(fn)


def workers_option(fn: F) -> F:
    """``--workers N``, processes serving the port (``store.gateways.workers``)."""
    return click.option(
        "--workers",
        default=1,
        show_default=True,
        type=click.IntRange(1, 64),
        help="Processes serving the port, one core each (SO_REUSEPORT);"
        " worker i serves its metrics on the --metrics port + i.",
    )(fn)


@dataclass(frozen=True)
class Place:
    """Where this gateway process serves."""

    port: int
    metrics: str | None
    worker: gateway_workers.WorkerSlot | None  # one of several workers on the port


def place(workers: int, listen: str, metrics: str | None) -> Place | None:
    """Where this process serves: as given, or as the worker its supervisor started. With
    ``--workers`` above 1 this process is the supervisor: it runs the workers until they
    stop and returns None (or ends the command with a worker's failure)."""
    host, port = host_port(listen, "--listen")
    threadsched.run_as_batch()  # before any worker thread or process starts
    slot = gateway_workers.current()
    if slot is not None:
        return Place(slot.port, slot.metrics(metrics), slot)
    if workers == 1:
        return Place(port, metrics, None)
    try:
        status = gateway_workers.supervise(workers, host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {listen}: {exc}") from None
    if status:
        raise click.exceptions.Exit(status)
    return None


def host_port(value: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` given by `flag` as (host, port); a usage error naming `flag` if it is
    not one."""
    try:
        return parse_hostport(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None


def check_metrics(metrics: str | None) -> None:
    """A usage error if ``--metrics`` is given and is not HOST:PORT."""
    if metrics is not None:
        host_port(metrics, "--metrics")


def setup_logging(role: str, log_format: str) -> None:
    """Log as `role`, at INFO at least (``-vv``: DEBUG): a gateway says when it is ready."""
    verbose = click.get_current_context().params.get("verbose")
    logs.setup(max(int(verbose or 0), 1), role, log_format)


def run_until_interrupted(main: Callable[[], Awaitable[None]], listen: str) -> None:
    """Run a gateway process until Ctrl-C. An address it cannot listen on, and an error it
    already words for the command line, end the command with that message alone."""
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass
    except (OSError, BaseExceptionGroup) as exc:
        inner = single_error(exc)
        if isinstance(inner, OSError):
            raise click.ClickException(f"cannot serve on {listen}: {inner}") from None
        if isinstance(inner, click.ClickException):
            raise inner from None
        raise
