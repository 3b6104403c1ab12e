"""Logging set-up shared by every process: one event a line, human or JSON.

``-v`` levels: daemons log INFO by default (start, stop, map epochs, peers, recoveries,
refused authentications) and DEBUG with ``-vv``; command-line tools log WARNING unless
given ``-v``. ``--log-format json`` writes one JSON object a line (``time``, ``level``,
``process``, ``logger``, ``message``, and ``exception`` when there is one) for log
shippers; ``human`` is the default.

No key or secret is ever passed to a logger. As a second line of defence, a process can
``register_secret`` the secrets it holds; any that would still appear in a line (raw, in
base64 or in hex) is replaced with ``[secret]``.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

FORMATS = ("human", "json")
F = TypeVar("F", bound=Callable[..., Any])

_secrets: set[str] = set()


def register_secret(secret: bytes) -> None:
    """Never let `secret` reach a log line, in any of the encodings store writes it in."""
    if len(secret) < 8:
        return  # too short to be a key, and would mask ordinary text
    forms = {
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        secret.hex(),
        secret.hex().upper(),
    }
    try:
        forms.add(secret.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    forms.add(repr(secret)[2:-1])
    _secrets.update(f for f in forms if len(f) >= 8)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[secret]")
    return text


class HumanFormatter(logging.Formatter):
    def __init__(self, name: str | None) -> None:
        prefix = f"{name} " if name else ""
        super().__init__(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def __init__(self, name: str | None) -> None:
        super().__init__()
        self.process_name = name

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "process": self.process_name,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, ensure_ascii=False))


def setup(verbosity: int, name: str | None = None, fmt: str = "human") -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = JsonFormatter(name) if fmt == "json" else HumanFormatter(name)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def format_option(fn: F) -> F:
    """``--log-format human|json`` (also from $STORE_LOG_FORMAT), passed as `log_format`."""
    return click.option(
        "--log-format",
        type=click.Choice(FORMATS),
        default="human",
        show_default=True,
        envvar="STORE_LOG_FORMAT",
        help="One event a line: human-readable text, or JSON objects.",
    )(fn)
