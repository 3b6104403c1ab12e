"""`--config FILE`: keys are flag names, flags win, sources are reported, secrets masked."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from store import configfile
from store.configfile import (
    MASK,
    Setting,
    config_option,
    effective,
    is_secret,
    masked,
    render_toml,
    resolve_command_line,
    toml_value,
)
from store.errors import ConfigError

seen: dict[str, Any] = {}


@click.group()
def root() -> None:
    pass


@root.command("serve")
@config_option
@click.option("--listen", default="127.0.0.1:1", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path))
@click.option("--workers", default=2, type=int)
@click.option("--encrypt/--no-encrypt", default=True)
@click.option("--public", multiple=True)
@click.option("--secret-key", default=None)
@click.option("--token-file", default=None, type=click.Path(path_type=Path))
@click.option("-v", "--verbose", count=True)
def serve(**params: Any) -> None:
    ctx = click.get_current_context()
    seen.clear()
    seen.update(params)
    seen["effective"] = {s.key: s for s in effective(ctx)}
    seen["document"] = configfile.document(ctx, "serve")


def run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(root, list(args), catch_exceptions=False)


def test_file_values_flags_win_and_sources(tmp_path: Path) -> None:
    conf = tmp_path / "serve.toml"
    conf.write_text(
        'listen = "0.0.0.0:9"\n'
        "workers = 7\n"
        'data_dir = "data"\n'  # underscore spelling; relative to the file
        "encrypt = false\n"
        'public = "one"\n'  # one value for a repeatable flag
        "verbose = 2\n"
        'secret-key = "hunter2-hunter2"\n'
    )
    result = run("serve", "--config", str(conf), "--workers", "3")
    assert result.exit_code == 0, result.output
    assert seen["listen"] == "0.0.0.0:9"
    assert seen["workers"] == 3
    assert seen["data_dir"] == tmp_path / "data"
    assert seen["encrypt"] is False
    assert seen["public"] == ("one",)
    assert seen["verbose"] == 2
    found: dict[str, Setting] = seen["effective"]
    assert found["workers"].source == "command line"
    assert found["listen"].source == "config file"
    assert found["token-file"].source == "default"
    assert found["secret-key"].secret and not found["token-file"].secret
    settings = seen["document"]["settings"]
    assert settings["secret-key"] == {"value": MASK, "source": "config file"}
    assert settings["data-dir"]["value"] == str(tmp_path / "data")
    assert seen["document"]["config_file"] == str(conf.resolve())
    assert "hunter2" not in json.dumps(seen["document"])


def test_no_file_is_all_defaults() -> None:
    assert run("serve").exit_code == 0
    assert {s.source for s in seen["effective"].values()} == {"default"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('lisen = "x"\n', "`lisen` is not a setting of this command; there are: data-dir"),
        ("workers = \n", "is not valid TOML"),
        ("listen = {a = 1}\n", "must be a string, number, boolean or list"),
        ('listen = ["a", "b"]\n', "takes one value, not a list"),
        ("help = true\n", "`help` is not a setting"),
        ("workers = 'many'\n", "'many' is not a valid integer"),
    ],
)
def test_bad_files_are_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    result = CliRunner().invoke(root, ["serve", "--config", str(conf)])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(root, ["serve", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 2 and "does not exist" in result.output
    with pytest.raises(ConfigError, match="does not exist"):
        configfile.read_file(tmp_path / "none.toml")


def test_secret_names() -> None:
    for key in ("secret-key", "admin_secret", "password", "s3-token", "private-key"):
        assert is_secret(key), key
    for key in ("token-file", "tls-dir", "keyring", "listen", "tls-key-file", "data-dir"):
        assert not is_secret(key), key
    settings = [
        Setting("password", "x", "default", True),
        Setting("unset-password", None, "default", True),
        Setting("listen", "a", "default", False),
    ]
    assert masked(settings) == {
        "password": {"value": MASK, "source": "default"},
        "unset-password": {"value": None, "source": "default"},
        "listen": {"value": "a", "source": "default"},
    }


def test_rendered_toml_reads_back() -> None:
    doc = {
        "command": "store serve",
        "pid": 12,
        "settings": {
            "listen": {"value": 'a "quoted" \\ value\n', "source": "default"},
            "ratio": {"value": 0.5, "source": "config file"},
            "workers": {"value": 3, "source": "command line"},
            "encrypt": {"value": False, "source": "default"},
            "public": {"value": ["a", "b"], "source": "default"},
            "unset": {"value": None, "source": "default"},
        },
    }
    text = render_toml(doc)
    assert text.splitlines()[0] == "# effective configuration of `store serve` (pid 12)"
    assert "# unset is not set" in text
    parsed = tomllib.loads(text)
    assert parsed == {
        "listen": 'a "quoted" \\ value\n',
        "ratio": 0.5,
        "workers": 3,
        "encrypt": False,
        "public": ["a", "b"],
    }
    assert toml_value(float("inf")) == "inf" and toml_value(True) == "true"


def test_resolve_a_command_line_without_running_it(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("workers = 9\n")
    seen.clear()
    ctx = resolve_command_line(root, ["serve", "--config", str(conf), "--listen", "h:1"])
    assert seen == {}  # parsed, not run
    doc = configfile.document(ctx, "serve")
    assert doc["command"] == "store serve"
    assert doc["settings"]["workers"] == {"value": 9, "source": "config file"}
    assert doc["settings"]["listen"] == {"value": "h:1", "source": "command line"}


def test_running_config_file(tmp_path: Path) -> None:
    doc = {"role": "osd", "pid": 999_999_999, "settings": {}}
    path = configfile.write_running(tmp_path, doc)
    assert path.stat().st_mode & 0o777 == 0o600
    read, alive = configfile.read_running(tmp_path)
    assert read == doc and alive is False
    configfile.write_running(tmp_path, {**doc, "pid": os.getpid()})
    assert configfile.read_running(tmp_path)[1] is True
    (tmp_path / configfile.RUNNING_CONFIG).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a configuration document"):
        configfile.read_running(tmp_path)
