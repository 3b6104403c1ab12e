"""``--config FILE`` for every daemon and gateway, and ``store config show``.

Theory of operation
-------------------
A configuration file is TOML whose keys are the command's long flag names::

    # /etc/store/osd-disk1.toml, for `store osd --config /etc/store/osd-disk1.toml`
    dir = "/srv/disk1"
    master = "master.example.net:6789"
    listen = "0.0.0.0:6800"
    advertise = "10.0.0.11:6800"
    tls-dir = "/etc/store/tls"
    metrics = "0.0.0.0:9101"
    verbose = 1

(``tls_dir`` is accepted for ``tls-dir``; a flag ``--x/--no-x`` is ``x = true|false``; a
repeatable flag takes a list.) ``--config`` is processed before the other flags and puts
the file's values in click's ``default_map``, so click's own precedence applies:
command line, then environment, then the file, then the built-in default. Relative paths
in the file are relative to the file. A key that is no flag of the command is an error
that lists the keys there are.

The *effective* configuration of a process is every flag with its value and where the
value came from. Daemons write it (secrets masked) to ``running-config.json`` in their
data directory when they start, and every process given ``--metrics`` serves it at
``/config``; ``store config show`` reads either, or resolves a command line without
running it.
"""

from __future__ import annotations

import json
import math
import os
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from store.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])

RUNNING_CONFIG = "running-config.json"
MASK = "********"
_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "private")
_PATH_ENDINGS = ("-file", "-dir", "-path", "keyring")
_NOT_SETTINGS = {"config", "help", "version"}
_META_FILE = "store.config_file"


# --- reading ------------------------------------------------------------------------------


def flag_name(param: click.Parameter) -> str:
    """The key of a parameter in a configuration file: its first long flag, without --."""
    for opt in param.opts:
        if opt.startswith("--"):
            return opt[2:]
    return (param.name or "").replace("_", "-")


def settings_of(command: click.Command) -> dict[str, click.Option]:
    return {
        flag_name(p): p
        for p in command.params
        if isinstance(p, click.Option) and p.name not in _NOT_SETTINGS
    }


def read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None


def defaults_from(command: click.Command, doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``default_map`` a file gives `command`; ConfigError names any bad key or value."""
    options = settings_of(command)
    out: dict[str, Any] = {}
    for key, value in doc.items():
        option = options.get(key) or options.get(key.replace("_", "-"))
        if option is None or option.name is None:
            known = ", ".join(sorted(options))
            raise ConfigError(
                f"{path}: `{key}` is not a setting of this command; there are: {known}"
            )
        if not _is_plain(value):
            raise ConfigError(f"{path}: `{key}` must be a string, number, boolean or list of those")
        if option.multiple and not isinstance(value, list):
            value = [value]
        if not option.multiple and isinstance(value, list):
            raise ConfigError(f"{path}: `{key}` takes one value, not a list")
        if isinstance(option.type, click.Path):
            value = _relative_to(path.parent, value)
        out[option.name] = value
    return out


def _is_plain(value: object) -> bool:
    if isinstance(value, list):
        return all(isinstance(v, str | int | float | bool) for v in value)
    return isinstance(value, str | int | float | bool)


def _relative_to(base: Path, value: Any) -> Any:
    if isinstance(value, list):
        return [_relative_to(base, v) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
        return str(base / value)
    return value


def _load(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is None:
        return None
    try:
        defaults = defaults_from(ctx.command, read_file(value), value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta[_META_FILE] = value
    return value


def config_option(fn: F) -> F:
    """Add ``--config FILE`` to a click command (place it above the other options)."""
    return click.option(
        "--config",
        type=click.Path(dir_okay=False, path_type=Path),
        is_eager=True,
        expose_value=False,
        callback=_load,
        envvar=None,
        help="TOML file of settings: keys are the long flag names; flags override it.",
    )(fn)


# --- the effective configuration ---------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    key: str
    value: Any
    source: str  # "command line", "environment", "config file", "default"
    secret: bool


def is_secret(key: str) -> bool:
    """Settings whose values are secrets (a path to a secret is not one)."""
    key = key.lower().replace("_", "-")
    if key.endswith(_PATH_ENDINGS):
        return False
    return any(word in key for word in _SECRET_WORDS)


_SOURCES = {
    click.core.ParameterSource.COMMANDLINE: "command line",
    click.core.ParameterSource.ENVIRONMENT: "environment",
    click.core.ParameterSource.DEFAULT_MAP: "config file",
    click.core.ParameterSource.DEFAULT: "default",
    click.core.ParameterSource.PROMPT: "prompt",
}


def effective(ctx: click.Context, secrets: Iterable[str] = ()) -> list[Setting]:
    """Every setting of the command being run, with its value and its source."""
    extra = set(secrets)
    out = []
    for key, option in sorted(settings_of(ctx.command).items()):
        assert option.name is not None
        source = ctx.get_parameter_source(option.name)
        out.append(
            Setting(
                key=key,
                value=_plain(ctx.params.get(option.name)),
                source=_SOURCES.get(source, "default") if source is not None else "default",
                secret=key in extra or is_secret(key),
            )
        )
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def masked(settings: Iterable[Setting]) -> dict[str, dict[str, Any]]:
    """``{key: {"value": ..., "source": ...}}`` with every secret value replaced."""
    return {
        s.key: {
            "value": MASK if s.secret and s.value not in (None, "", [], False) else s.value,
            "source": s.source,
        }
        for s in settings
    }


def document(ctx: click.Context, role: str, secrets: Iterable[str] = ()) -> dict[str, Any]:
    """What a process publishes about itself: role, pid, file read, settings (masked)."""
    file = ctx.meta.get(_META_FILE)
    return {
        "role": role,
        "command": command_name(ctx),
        "pid": os.getpid(),
        "started": time.time(),
        "config_file": str(Path(file).resolve()) if file is not None else None,
        "settings": masked(effective(ctx, secrets)),
    }


def command_name(ctx: click.Context) -> str:
    """``store osd``, however the program was started (``python -m store`` included)."""
    names: list[str] = []
    node: click.Context | None = ctx
    while node is not None and node.parent is not None:
        names.append(node.info_name or "")
        node = node.parent
    return " ".join(["store", *reversed(names)])


def write_running(directory: Path, doc: dict[str, Any]) -> Path:
    """Write the document next to the process's data; readable by its owner only."""
    path = directory / RUNNING_CONFIG
    tmp = directory / (RUNNING_CONFIG + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    tmp.replace(path)
    return path


# --- showing ------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    # JSON's string escapes are TOML's basic-string escapes.
    return json.dumps(str(value), ensure_ascii=False)


def render_toml(doc: dict[str, Any]) -> str:
    """A document as TOML that `--config` accepts back, with each value's source."""
    lines = [f"# effective configuration of `{doc.get('command') or doc.get('role')}`"]
    if doc.get("pid"):
        lines[0] += f" (pid {doc['pid']})"
    if doc.get("config_file"):
        lines.append(f"# read from {doc['config_file']}")
    settings: dict[str, dict[str, Any]] = doc.get("settings", {})
    width = max((len(k) for k in settings), default=0)
    for key, entry in sorted(settings.items()):
        value, source = entry.get("value"), entry.get("source", "")
        if value is None:
            lines.append(f"# {key} is not set".ljust(width + 24) + f"  # {source}")
        else:
            lines.append(f"{key} = {toml_value(value)}".ljust(width + 24) + f"  # {source}")
    return "\n".join(lines)


def resolve_command_line(root: click.Group, args: list[str]) -> click.Context:
    """Parse `store ARGS` (reading its --config) down to the command it would run."""
    ctx = root.make_context("store", list(args))
    command: click.Command = root
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        if not rest:
            break
        name, sub, rest = command.resolve_command(ctx, rest)
        if sub is None or name is None:
            break
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub
    return ctx


def fetch(address: str, timeout: float = 10.0) -> dict[str, Any]:
    """The document a process serves at http://ADDRESS/config."""
    url = address if "://" in address else f"http://{address}"
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/config", timeout=timeout) as answer:
            doc = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"{url}/config answered {exc.code}: {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(f"cannot reach {url}/config: {exc}") from None
    except ValueError:
        raise ConfigError(f"{url}/config did not answer JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings"), dict):
        raise ConfigError(f"{url}/config is not a store configuration document")
    return doc


def read_running(directory: Path) -> tuple[dict[str, Any], bool]:
    """The document in DIRECTORY/running-config.json, and whether its process still runs."""
    path = directory / RUNNING_CONFIG
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist: no master or daemon has run with data directory {directory}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is not a configuration document")
    return doc, _alive(doc.get("pid"))


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@click.group("config")
def config_group() -> None:
    """Configuration files and the effective configuration of processes."""


@config_group.command(
    "show", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="The data directory of a master or daemon (it writes running-config.json there).",
)
@click.option(
    "--metrics", "address", help="HOST:PORT of a process's --metrics port (it serves /config)."
)
@click.option("--json", "as_json", is_flag=True)
@click.argument("command_line", nargs=-1, type=click.UNPROCESSED)
def show_command(
    directory: Path | None, address: str | None, as_json: bool, command_line: tuple[str, ...]
) -> None:
    """Print a process's effective configuration, secrets masked.

    \b
    store config show --dir /var/lib/store/osd.0    a running (or last run) daemon or master
    store config show --metrics 10.0.0.11:9101      any process serving --metrics
    store config show -- osd --config osd.toml      what that command line would run with
    """
    given = sum(x is not None and x != () for x in (directory, address, command_line or None))
    if given != 1:
        raise click.UsageError("give one of --dir DIR, --metrics HOST:PORT or -- COMMAND ARGS")
    try:
        if directory is not None:
            doc, alive = read_running(directory)
            note = "running" if alive else "not running: the configuration it last ran with"
            doc = {**doc, "note": note}
        elif address is not None:
            doc = fetch(address)
        else:
            from store.cli import main

            ctx = resolve_command_line(main, list(command_line))
            doc = document(ctx, command_name(ctx).removeprefix("store "))
            doc["pid"] = None
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
    else:
        text = render_toml(doc)
        if doc.get("note"):
            text = f"# {doc['note']}\n{text}"
        click.echo(text)
