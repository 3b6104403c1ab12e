"""Client configuration: which master, which CA, which name and key.

Like ``ceph.conf`` plus a keyring: a small TOML file

    master = "127.0.0.1:6789"
    ca = "tls/ca.crt"
    name = "admin"
    keyring = "admin.key"
    timeout = 30.0

found at ``--conf``, else ``$STORE_CONF``, else ``~/.config/store/store.conf``. Relative
paths are relative to the file. ``--name`` and ``--keyring`` override the file.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from store.auth import read_keyfile
from store.errors import ConfigError

DEFAULT_CONF = Path("~/.config/store/store.conf")


@dataclass(frozen=True)
class ClientConfig:
    master: str
    ca: Path
    name: str
    secret: bytes
    timeout: float = 30.0  # a request that gets no answer by then fails
    max_datagram: int = 65000
    path: Path | None = None


def config_path(conf: str | os.PathLike[str] | None) -> Path:
    if conf:
        return Path(conf)
    env = os.environ.get("STORE_CONF")
    if env:
        return Path(env)
    return DEFAULT_CONF.expanduser()


def load_config(
    conf: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    keyring: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> ClientConfig:
    path = config_path(conf)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no client configuration at {path}: pass --conf, set STORE_CONF, or run "
            "`store cluster up --dir DIR` which writes DIR/store.conf"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read client configuration {path}: {exc}") from None
    base = path.parent

    def field_of(key: str, kind: type) -> object:
        if key not in raw:
            raise ConfigError(f"{path}: missing `{key}`")
        if not isinstance(raw[key], kind):
            raise ConfigError(f"{path}: `{key}` must be a {kind.__name__}")
        return raw[key]

    master = str(field_of("master", str))
    ca = base / str(field_of("ca", str))
    keyfile = Path(keyring) if keyring else base / str(field_of("keyring", str))
    key_name, secret = read_keyfile(keyfile)
    wanted = name if name is not None else raw.get("name")
    if wanted is not None and wanted != key_name:
        raise ConfigError(f"key file {keyfile} holds the key of {key_name!r}, not {wanted!r}")
    conf_timeout = raw.get("timeout", 30.0)
    if not isinstance(conf_timeout, (int, float)) or conf_timeout <= 0:
        raise ConfigError(f"{path}: `timeout` must be a positive number of seconds")
    max_datagram = raw.get("max_datagram", 65000)
    if not isinstance(max_datagram, int) or not 1400 <= max_datagram <= 65507:
        raise ConfigError(f"{path}: `max_datagram` must be between 1400 and 65507")
    return ClientConfig(
        master=master,
        ca=ca,
        name=key_name,
        secret=secret,
        timeout=float(timeout if timeout is not None else conf_timeout),
        max_datagram=max_datagram,
        path=path,
    )


def write_config(
    path: Path, *, master: str, ca: Path, keyring: Path, timeout: float = 30.0
) -> None:
    def rel(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(path.parent.resolve()))
        except ValueError:
            return str(p.resolve())

    text = (
        f'master = "{master}"\nca = "{rel(ca)}"\nkeyring = "{rel(keyring)}"\ntimeout = {timeout}\n'
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
