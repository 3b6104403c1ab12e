"""The plugin's parameters, as nbdkit passes them: ``key=value`` words on its command line.

    nbdkit python PLUGIN image=POOL/NAME [conf=PATH] [name=CLIENT] [keyring=PATH]
                         [readonly=true] [lease=SECONDS] [timeout=SECONDS]
                         [metrics=HOST:PORT] [log-format=human|json] [parallel=true]

Paths are made absolute at once: nbdkit changes directory to / when it daemonizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.client.config import config_path
from store.configfile import MASK, is_secret
from store.errors import ConfigError
from store.image.errors import ImageError
from store.image.lock import DEFAULT_LEASE, check_lease
from store.image.model import parse_image_spec
from store.logs import FORMATS
from store.rpc import parse_hostport

HELP = """\
image=POOL/NAME    the image to serve (required)
conf=PATH          client configuration (default: $STORE_CONF, ~/.config/store/store.conf)
name=CLIENT        client name (must match the key file)
keyring=PATH       key file (default: the configuration's)
readonly=BOOL      serve read-only, without taking the image's lock (default: false)
lease=SECONDS      length of the writer's lock lease (default: 30)
timeout=SECONDS    fail a cluster request after this long (default: the configuration's)
metrics=HOST:PORT  serve Prometheus /metrics, /healthz, /readyz and /config here
log-format=FORMAT  human (default) or json: one JSON object a line
parallel=BOOL      serve a connection's requests in parallel (default: false); only
                   behind `store nbd serve`'s relay, or with nbdkit 1.33.10 or later"""

# `store nbd serve` passes its effective configuration to the plugin here (see process.py).
DOCUMENT_VARIABLE = "STORE_NBD_RUNNING_CONFIG"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class PluginSettings:
    pool: str
    image: str
    conf: Path
    name: str | None = None
    keyring: Path | None = None
    readonly: bool = False
    lease: float = DEFAULT_LEASE
    timeout: float | None = None
    metrics: str | None = None
    log_format: str = "human"
    parallel: bool = False

    @property
    def spec(self) -> str:
        return f"{self.pool}/{self.image}"


def parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{key}={value}: give true or false")


def _seconds(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{key}={value}: give a number of seconds") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{key}={value}: give a positive number of seconds")
    return seconds


class SettingsBuilder:
    """Collects ``config(key, value)`` calls; ``build`` checks that they make sense."""

    KEYS = (
        "image",
        "conf",
        "name",
        "keyring",
        "readonly",
        "lease",
        "timeout",
        "metrics",
        "log-format",
        "parallel",
    )

    def __init__(self) -> None:
        self._given: dict[str, str] = {}

    def set(self, key: str, value: str) -> None:
        if key not in self.KEYS:
            raise ConfigError(f"unknown parameter {key!r}; the parameters are:\n{HELP}")
        if key in self._given:
            raise ConfigError(f"parameter {key} given twice")
        self._given[key] = value

    def build(self) -> PluginSettings:
        given = self._given
        if "image" not in given:
            raise ConfigError("the image to serve is missing: add image=POOL/NAME")
        try:
            pool, name = parse_image_spec(given["image"])
            lease = check_lease(_seconds("lease", given["lease"])) if "lease" in given else None
        except ImageError as exc:
            raise ConfigError(str(exc)) from None
        keyring = given.get("keyring")
        metrics = given.get("metrics") or None
        if metrics is not None:
            try:
                parse_hostport(metrics)
            except ValueError as exc:
                raise ConfigError(f"metrics={metrics}: {exc}") from None
        log_format = given.get("log-format", "human")
        if log_format not in FORMATS:
            raise ConfigError(f"log-format={log_format}: give one of {', '.join(FORMATS)}")
        return PluginSettings(
            pool=pool,
            image=name,
            conf=config_path(given.get("conf") or None).expanduser().resolve(),
            name=given.get("name") or None,
            keyring=Path(keyring).expanduser().resolve() if keyring else None,
            readonly=parse_bool("readonly", given["readonly"]) if "readonly" in given else False,
            lease=lease if lease is not None else DEFAULT_LEASE,
            timeout=_seconds("timeout", given["timeout"]) if "timeout" in given else None,
            metrics=metrics,
            log_format=log_format,
            parallel=parse_bool("parallel", given["parallel"]) if "parallel" in given else False,
        )

    def described(self) -> dict[str, dict[str, Any]]:
        """Every parameter as ``store config show`` lists settings, secrets masked."""
        out: dict[str, dict[str, Any]] = {}
        for key in self.KEYS:
            if key in self._given:
                value = self._given[key]
                shown = MASK if is_secret(key) and value else value
                out[key] = {"value": shown, "source": "nbdkit parameter"}
            else:
                out[key] = {"value": None, "source": "default"}
        return out
