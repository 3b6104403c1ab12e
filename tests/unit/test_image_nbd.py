"""The NBD gateway's pure parts: parameters, errnos, launcher, nbdkit command, flush barrier."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from store.errors import ClientTimeout, Code, ConfigError, RemoteError
from store.gateways.nbd.cli import nbdkit_command
from store.gateways.nbd.errors import GatewayStopped, WriteRefused, describe, errno_for
from store.gateways.nbd.launcher import launcher_text, write_launcher
from store.gateways.nbd.settings import SettingsBuilder
from store.image.errors import ImageBusy, LockLost
from store.image.io import WritesInFlight, remote_code


def build(**given: str) -> object:
    builder = SettingsBuilder()
    for key, value in given.items():
        builder.set(key, value)
    return builder.build()


def test_settings_parse_and_resolve_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = build(image="rbd/disk", conf="store.conf", keyring="k.key", readonly="yes", lease="3")
    assert (s.pool, s.image, s.readonly, s.lease) == ("rbd", "disk", True, 3.0)  # type: ignore[attr-defined]
    assert s.conf == tmp_path / "store.conf"  # type: ignore[attr-defined]
    assert s.keyring == tmp_path / "k.key"  # type: ignore[attr-defined]
    defaults = build(image="rbd/disk")
    assert defaults.readonly is False and defaults.lease == 30.0  # type: ignore[attr-defined]
    assert defaults.conf.is_absolute()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "image=POOL/NAME"),
        ({"image": "nopool"}, "POOL/NAME"),
        ({"image": "p/d", "readonly": "maybe"}, "true or false"),
        ({"image": "p/d", "lease": "0.1"}, "lease"),
        ({"image": "p/d", "timeout": "-1"}, "positive"),
    ],
)
def test_bad_settings_say_what_is_wrong(given: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(**given)


def test_unknown_and_repeated_keys_are_refused() -> None:
    builder = SettingsBuilder()
    with pytest.raises(ConfigError, match="image=POOL/NAME"):
        builder.set("imgae", "p/d")
    builder.set("image", "p/d")
    with pytest.raises(ConfigError, match="twice"):
        builder.set("image", "p/e")


def test_errnos_seen_by_nbd_clients() -> None:
    assert errno_for(RemoteError(Code.ENOSPC, "full")) == errno.ENOSPC
    assert errno_for(RemoteError(Code.EPERM, "caps")) == errno.EPERM
    assert errno_for(RemoteError(Code.EIO, "checksum")) == errno.EIO
    assert errno_for(RemoteError(Code.EDEGRADED, "")) == errno.EIO
    assert errno_for(ClientTimeout("slow")) == errno.EIO
    assert errno_for(LockLost("gone")) == errno.EIO
    assert errno_for(WriteRefused("ro")) == errno.EPERM
    assert errno_for(ImageBusy("held")) == errno.EBUSY
    assert errno_for(GatewayStopped("stop")) == errno.ESHUTDOWN
    assert errno_for(ValueError("bug")) == errno.EIO
    grouped = BaseExceptionGroup("g", [RemoteError(Code.ENOSPC, "full")])
    assert errno_for(BaseExceptionGroup("outer", [grouped])) == errno.ENOSPC
    assert describe(grouped) == "ENOSPC: full"


def test_remote_code_looks_inside_groups() -> None:
    same = BaseExceptionGroup("g", [RemoteError(Code.ENOENT), RemoteError(Code.ENOENT)])
    mixed = BaseExceptionGroup("g", [RemoteError(Code.ENOENT), RemoteError(Code.EIO)])
    assert remote_code(same) == Code.ENOENT
    assert remote_code(mixed) is None
    assert remote_code(ValueError()) is None


def test_launcher_puts_site_dirs_first_and_checks_the_version() -> None:
    text = launcher_text(["/venv/site-packages", "/src"], (3, 11))
    compile(text, "launcher.py", "exec")
    assert "SITE_DIRS = ['/venv/site-packages', '/src']" in text
    assert "sys.version_info[:2] != (3, 11)" in text
    assert "sys.path[:] = SITE_DIRS + " in text
    assert "from store.gateways.nbd.plugin import *" in text


def test_launcher_is_written_once_in_a_private_folder(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    first = write_launcher("print(1)\n", folder)
    stamp = first.stat().st_mtime_ns
    assert write_launcher("print(1)\n", folder) == first
    assert first.stat().st_mtime_ns == stamp
    assert write_launcher("print(2)\n", folder) != first
    assert folder.stat().st_mode & 0o777 == 0o700
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    with pytest.raises(PermissionError):
        write_launcher("print(1)\n", shared)


def test_nbdkit_command_line() -> None:
    plugin, conf = Path("/c/plugin.py"), Path("/c/store.conf")
    assert nbdkit_command(plugin, "rbd/disk", conf=conf, unix=Path("/run/d.sock")) == [
        "nbdkit",
        "--foreground",
        "--unix",
        "/run/d.sock",
        "python",
        "/c/plugin.py",
        "image=rbd/disk",
        "conf=/c/store.conf",
    ]
    args = nbdkit_command(
        plugin, "rbd/disk", conf=conf, port=10810, bind="127.0.0.1", readonly=True, lease=5
    )
    assert args[2:7] == ["--port", "10810", "--ipaddr", "127.0.0.1", "--readonly"]
    assert args[-2:] == ["readonly=true", "lease=5"]


async def test_flush_waits_for_every_write_begun_before_it() -> None:
    writes = WritesInFlight()
    release = [trio.Event(), trio.Event()]
    flushed = trio.Event()

    async def write(i: int) -> None:
        with writes.tracking():
            await release[i].wait()

    async def flush() -> None:
        await writes.wait()
        flushed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, 0)
        nursery.start_soon(write, 1)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(flush)
        await trio.testing.wait_all_tasks_blocked()
        release[1].set()
        await trio.testing.wait_all_tasks_blocked()
        assert not flushed.is_set()
        release[0].set()
        await flushed.wait()
    assert len(writes) == 0
