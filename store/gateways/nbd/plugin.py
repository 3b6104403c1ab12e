"""nbdkit's callbacks: the NBD gateway as nbdkit's Python plugin runs it (``API_VERSION = 2``).

nbdkit loads the script ``store nbd plugin-path`` prints, which puts store's packages
on ``sys.path`` and imports every name of ``__all__`` from here. The callbacks are thin:
each hands its work to :class:`~store.gateways.nbd.service.ImageGateway` in the trio
thread (:mod:`.bridge`) and turns a failure into the errno the NBD client should see
(:mod:`.errors`) before raising, which is how nbdkit's Python plugin reports errors.

Thread model: ``SERIALIZE_REQUESTS`` unless ``parallel=true``: one request at a time per
connection, connections in parallel. nbdkit 1.32 can abort in the ``PARALLEL`` model when a
client's input ends badly with requests in flight; ``store nbd serve`` puts a relay in
front of nbdkit that prevents that (:mod:`.relay`) and passes ``parallel=true``. Clients
also get parallelism from several connections, which ``can_multi_conn`` allows because a
flush on any connection waits for the writes of all. Within a request, the pieces of
every object it spans are sent in parallel.

With ``metrics=HOST:PORT`` the trio thread also serves Prometheus metrics, health and the
configuration (:mod:`.process`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import nbdkit

from store import malloc, threadsched
from store.client.config import ClientConfig, load_config
from store.gateways.nbd.bridge import TrioThread
from store.gateways.nbd.errors import describe, errno_for
from store.gateways.nbd.process import document_from_environment, plugin_document, serve_image
from store.gateways.nbd.service import Connection, ImageGateway
from store.gateways.nbd.settings import DOCUMENT_VARIABLE, PluginSettings, SettingsBuilder
from store.image.model import MAX_OBJECT_SIZE
from store.logs import JsonFormatter, redact

API_VERSION = 2

__all__ = [
    "API_VERSION",
    "after_fork",
    "block_size",
    "can_cache",
    "can_extents",
    "can_fast_zero",
    "can_flush",
    "can_fua",
    "can_multi_conn",
    "can_trim",
    "can_write",
    "can_zero",
    "cleanup",
    "close",
    "config",
    "config_complete",
    "export_description",
    "extents",
    "flush",
    "get_ready",
    "get_size",
    "is_rotational",
    "open",
    "pread",
    "pwrite",
    "thread_model",
    "trim",
    "zero",
]

R = TypeVar("R")
log = logging.getLogger("store.nbd")

_builder = SettingsBuilder()
_settings: PluginSettings | None = None
_client_config: ClientConfig | None = None
_document: dict[str, Any] | None = None
_loop: TrioThread[ImageGateway] = TrioThread("store-nbd")
_gateway: ImageGateway | None = None


class _NbdkitLog(logging.Handler):
    """Warnings and errors to nbdkit's standard error; the rest to ``nbdkit -v`` only.
    With ``log-format=json`` the lines on standard error are JSON objects."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines
        self.setFormatter(JsonFormatter("nbd") if json_lines else logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = redact(self.format(record))
            if record.levelno < logging.WARNING:
                nbdkit.debug(f"store: {message}")
            elif self.json_lines:
                print(message, file=sys.stderr)
            else:
                print(f"nbdkit: store: {record.levelname.lower()}: {message}", file=sys.stderr)
        except Exception:
            self.handleError(record)


class GatewayError(Exception):
    """What nbdkit logs for a failed callback; the NBD client gets the errno set with it."""


def _fail(exc: BaseException) -> NoReturn:
    nbdkit.set_error(errno_for(exc))
    raise GatewayError(describe(exc)) from None


def _call(fn: Callable[..., Awaitable[R]], *args: Any) -> R:
    try:
        return _loop.run(fn, *args)
    except Exception as exc:
        _fail(exc)


def _served() -> ImageGateway:
    if _gateway is None:
        raise RuntimeError("the gateway is not running")
    return _gateway


# --- set-up ------------------------------------------------------------------------------


def config(key: str, value: str) -> None:
    try:
        _builder.set(key, value)
    except Exception as exc:
        _fail(exc)


def config_complete() -> None:
    global _settings, _client_config, _document
    try:
        _settings = _builder.build()
        # Left by `store nbd serve`; nothing nbdkit starts should inherit it.
        _document = document_from_environment(os.environ.pop(DOCUMENT_VARIABLE, None))
        if _document is None:
            _document = plugin_document(_builder.described())
        # Read the configuration and key now, so that mistakes stop nbdkit before it
        # daemonizes, with the message on the terminal.
        _client_config = load_config(
            _settings.conf,
            name=_settings.name,
            keyring=_settings.keyring,
            timeout=_settings.timeout,
        )
    except Exception as exc:
        _fail(exc)


def thread_model() -> int:
    if _settings is not None and _settings.parallel:
        return int(nbdkit.THREAD_MODEL_PARALLEL)
    return int(nbdkit.THREAD_MODEL_SERIALIZE_REQUESTS)


def get_ready() -> None:
    handler = _NbdkitLog(_settings is not None and _settings.log_format == "json")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def after_fork() -> None:
    global _gateway
    settings, client_config, document = _settings, _client_config, _document
    assert settings is not None and client_config is not None
    malloc.tune()  # nbdkit's own allocator: it holds every request's and reply's buffer
    threadsched.run_as_batch()  # nbdkit's threads too: they wait on the loop's GIL
    try:
        _gateway = _loop.start(
            lambda: serve_image(settings, client_config, document),
            timeout=2 * client_config.timeout + 5,
        )
    except Exception as exc:
        _fail(exc)
    model = "in parallel" if settings.parallel else "one at a time"
    log.info("serving image %s; each connection's requests %s", settings.spec, model)


def cleanup() -> None:
    _loop.stop(timeout=_client_config.timeout if _client_config else 10.0)


# --- connections -------------------------------------------------------------------------


def open(readonly: bool) -> Connection:
    return _call(_served().open, bool(readonly))


def close(h: Connection) -> None:
    try:
        _loop.run(_served().close, h)
    except Exception as exc:
        log.warning("closing a connection: %s", describe(exc))


def export_description(h: Connection) -> str:
    return f"store image {_served().settings.spec}"


def get_size(h: Connection) -> int:
    return h.size


def block_size(h: Connection) -> tuple[int, int, int]:
    preferred = max(512, min(h.object_size, MAX_OBJECT_SIZE))
    return (1, preferred, 0xFFFFFFFF)


def is_rotational(h: Connection) -> bool:
    return False


def can_write(h: Connection) -> bool:
    return not h.readonly


def can_flush(h: Connection) -> bool:
    return True


def can_trim(h: Connection) -> bool:
    return not h.readonly


def can_zero(h: Connection) -> bool:
    return not h.readonly


def can_fast_zero(h: Connection) -> bool:
    # Zeroing never writes data: whole objects are deleted or created sparse, partial
    # ones are zeroed by the daemons, which drop zero blocks.
    return True


def can_fua(h: Connection) -> int:
    # Every write is durable on every replica when acknowledged: FUA costs nothing.
    return int(nbdkit.FUA_NATIVE)


def can_multi_conn(h: Connection) -> bool:
    return True


def can_extents(h: Connection) -> bool:
    return True


def can_cache(h: Connection) -> int:
    return int(nbdkit.CACHE_NONE)


# --- I/O ---------------------------------------------------------------------------------


def pread(h: Connection, buf: Any, offset: int, flags: int) -> None:
    at = 0
    for part in _call(_served().pread, h, offset, len(buf)):
        buf[at : at + len(part)] = part
        at += len(part)


def pwrite(h: Connection, buf: Any, offset: int, flags: int) -> None:
    _call(_served().pwrite, h, offset, bytes(buf))


def flush(h: Connection, flags: int) -> None:
    _call(_served().flush, h)


def trim(h: Connection, count: int, offset: int, flags: int) -> None:
    _call(_served().trim, h, offset, count)


def zero(h: Connection, count: int, offset: int, flags: int) -> None:
    _call(_served().zero, h, offset, count, bool(flags & nbdkit.FLAG_MAY_TRIM))


def extents(h: Connection, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    found = _call(_served().extents, h, offset, count)
    if flags & nbdkit.FLAG_REQ_ONE:
        found = found[:1]
    hole = nbdkit.EXTENT_HOLE | nbdkit.EXTENT_ZERO
    return [(e.offset, e.length, hole if e.hole else 0) for e in found]
