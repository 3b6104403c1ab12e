"""Client commands: object I/O, pools, daemons, keys and status."""

from __future__ import annotations

import base64
import functools
import io
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import trio

from store import auth, logs
from store.client.api import Client
from store.client.config import ClientConfig, load_config
from store.client.master_link import MasterLink
from store.errors import StoreError, single_error

T = TypeVar("T")
PROGRESS_OVER = 8 * 1024 * 1024
SEGMENT = 4 * 1024 * 1024


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    @click.option(
        "--conf",
        envvar="STORE_CONF",
        type=click.Path(path_type=Path),
        help="Client configuration file.",
    )
    @click.option(
        "--name", "client_name", default=None, help="Client name (must match the key file)."
    )
    @click.option("--keyring", default=None, type=click.Path(path_type=Path), help="Key file.")
    @click.option("--timeout", default=None, type=float, help="Seconds before a request fails.")
    @click.option("-v", "--verbose", count=True)
    @functools.wraps(fn)
    def wrapper(
        conf: Path | None,
        client_name: str | None,
        keyring: Path | None,
        timeout: float | None,
        verbose: int,
        **kwargs: Any,
    ) -> Any:
        logs.setup(verbose)
        try:
            config = load_config(conf, name=client_name, keyring=keyring, timeout=timeout)
            return fn(config, **kwargs)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None
        except BaseExceptionGroup as group:
            inner = single_error(group)
            if isinstance(inner, StoreError):
                raise click.ClickException(str(inner)) from None
            raise

    return wrapper


def with_client(config: ClientConfig, fn: Callable[[Client], Awaitable[T]]) -> T:
    async def main() -> T:
        async with Client.connect(config) as client:
            return await fn(client)

    return trio.run(main)


def with_master(
    config: ClientConfig,
    op: str,
    args: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> Any:
    async def main() -> Any:
        async with trio.open_nursery() as nursery:
            link = await MasterLink.open(config, nursery, subscribe=False)
            try:
                return await link.call(op, args, timeout)
            finally:
                nursery.cancel_scope.cancel()

    return trio.run(main)


def emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default) if as_json else text(data))


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


# --- object I/O ------------------------------------------------------------------------


@click.command("write")
@click.option("--pool", required=True)
@click.argument("obj")
@click.argument("source", required=False)
@click.option("--data-literal", default=None, help="Write this text.")
@click.option(
    "--data-file", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--offset", default=None, type=int, help="Write at this offset instead of replacing the object."
)
@client_options
def write_command(
    config: ClientConfig,
    pool: str,
    obj: str,
    source: str | None,
    data_literal: str | None,
    data_file: Path | None,
    offset: int | None,
) -> None:
    """Write an object from --data-literal, --data-file or `-` (standard input)."""
    given = [x for x in (data_literal, data_file, source) if x is not None]
    if len(given) != 1 or (source is not None and source != "-"):
        raise click.UsageError("give exactly one of --data-literal S, --data-file F or - (stdin)")
    if data_literal is not None:
        data = data_literal.encode()
    elif data_file is not None:
        data = data_file.read_bytes()
    else:
        data = sys.stdin.buffer.read()

    async def run(client: Client) -> None:
        with _progress(len(data), f"writing {obj}") as bar:
            if offset is None:
                await client.write_full(pool, obj, data[:SEGMENT])
                start, base = SEGMENT, 0
            else:
                start, base = 0, offset
            bar.update(min(len(data), start))
            for pos in range(start, len(data), SEGMENT):
                await client.write(pool, obj, data[pos : pos + SEGMENT], base + pos)
                bar.update(len(data[pos : pos + SEGMENT]))

    with_client(config, run)


@click.command("read")
@click.option("--pool", required=True)
@click.argument("obj")
@click.option("--offset", default=0, type=int)
@click.option("--length", default=None, type=int)
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False, path_type=Path))
@client_options
def read_command(
    config: ClientConfig, pool: str, obj: str, offset: int, length: int | None, output: Path | None
) -> None:
    """Read an object (to standard output, or -o FILE)."""

    async def run(client: Client) -> bytes:
        total = (
            length if length is not None else max(0, (await client.stat(pool, obj)).size - offset)
        )
        out = bytearray()
        with _progress(total, f"reading {obj}") as bar:
            for pos in range(offset, offset + total, SEGMENT) if total else []:
                piece = await client.read(pool, obj, pos, min(SEGMENT, offset + total - pos))
                out += piece
                bar.update(len(piece))
                if len(piece) < min(SEGMENT, offset + total - pos):
                    break
        return bytes(out)

    data = with_client(config, run)
    if output is not None:
        output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


@click.command("delete")
@click.option("--pool", required=True)
@click.argument("obj")
@client_options
def delete_command(config: ClientConfig, pool: str, obj: str) -> None:
    """Delete an object."""
    with_client(config, lambda c: c.delete(pool, obj))


@click.command("stat")
@click.option("--pool", required=True)
@click.argument("obj")
@click.option("--json", "as_json", is_flag=True)
@client_options
def stat_command(config: ClientConfig, pool: str, obj: str, as_json: bool) -> None:
    """Size, version and placement of an object."""

    async def run(client: Client) -> dict[str, Any]:
        where = client.locate(pool, obj)
        st = await client.stat(pool, obj)
        return {
            "name": obj,
            "size": st.size,
            "version": list(st.version),
            "mtime": st.mtime,
            **where,
        }

    emit(
        with_client(config, run),
        as_json,
        lambda d: "\n".join(
            [
                f"{d['pool']}/{d['name']}: size {d['size']}, version {d['version'][0]}'{d['version'][1]}",
                f"pg {d['pg']}, acting {d['acting']}, primary osd.{d['primary']} (epoch {d['epoch']})",
            ]
        ),
    )


@click.command("ls")
@click.option("--pool", required=True)
@click.option("--prefix", default="")
@click.option("--json", "as_json", is_flag=True)
@client_options
def ls_command(config: ClientConfig, pool: str, prefix: str, as_json: bool) -> None:
    """List the objects of a pool."""
    found = with_client(config, lambda c: c.ls(pool, prefix))
    emit(
        [{"name": n, "size": s} for n, s in found],
        as_json,
        lambda d: "\n".join(e["name"] for e in d),
    )


def _progress(total: int, label: str) -> Any:
    show = total > PROGRESS_OVER and sys.stderr.isatty()
    return click.progressbar(
        length=max(total, 1), label=label, file=sys.stderr if show else io.StringIO()
    )


# --- pools -----------------------------------------------------------------------------


@click.group("pool")
def pool_group() -> None:
    """Create, list, change and remove pools."""


@pool_group.command("create")
@click.argument("name")
@click.option("--size", default=3, show_default=True, help="Replicas.")
@click.option(
    "--min-size",
    default=None,
    type=int,
    help="Replicas that must be up for writes (default: a majority).",
)
@click.option("--pg-num", default=64, show_default=True, help="Placement groups (a power of two).")
@click.option(
    "--encrypt/--no-encrypt", default=True, show_default=True, help="Encrypt datagram bodies."
)
@client_options
def pool_create(
    config: ClientConfig, name: str, size: int, min_size: int | None, pg_num: int, encrypt: bool
) -> None:
    result = with_master(
        config,
        "pool_create",
        {"name": name, "size": size, "min_size": min_size, "pg_num": pg_num, "encrypt": encrypt},
    )
    p = result["pool"]
    click.echo(
        f"pool {p['name']} created: size {p['size']}, min_size {p['min_size']}, pg_num {p['pg_num']}"
    )


@pool_group.command("ls")
@click.option("--json", "as_json", is_flag=True)
@client_options
def pool_ls(config: ClientConfig, as_json: bool) -> None:
    pools = with_master(config, "pool_ls")["pools"]
    emit(
        pools,
        as_json,
        lambda ps: "\n".join(
            f"{p['name']}: id {p['id']}, size {p['size']}, min_size {p['min_size']}, pg_num {p['pg_num']}"
            f"{'' if p['encrypt'] else ', unencrypted'}"
            for p in ps
        ),
    )


@pool_group.command("set")
@click.argument("name")
@click.argument("key", type=click.Choice(["size", "min_size", "pg_num", "encrypt"]))
@click.argument("value")
@client_options
def pool_set(config: ClientConfig, name: str, key: str, value: str) -> None:
    p = with_master(config, "pool_set", {"name": name, "key": key, "value": value})["pool"]
    click.echo(f"pool {p['name']}: {key} = {p[key]}")


@pool_group.command("rm")
@click.argument("name")
@click.option(
    "--yes-i-really-mean-it", "sure", is_flag=True, help="Required: the pool's data is lost."
)
@client_options
def pool_rm(config: ClientConfig, name: str, sure: bool) -> None:
    if not sure:
        raise click.UsageError(f"removing pool {name!r} loses its data: add --yes-i-really-mean-it")
    with_master(config, "pool_rm", {"name": name})
    click.echo(f"pool {name} removed")


# --- daemons ---------------------------------------------------------------------------


@click.group("osd-admin")
def osd_admin_group() -> None:
    """Storage daemons (as seen by the master)."""


@osd_admin_group.command("ls")
@click.option("--json", "as_json", is_flag=True)
@client_options
def osd_ls(config: ClientConfig, as_json: bool) -> None:
    result = with_master(config, "osd_ls")
    osds = sorted(result["osds"], key=lambda o: o["id"])
    emit(
        osds,
        as_json,
        lambda os_: "\n".join(
            f"osd.{o['id']}: {'up' if o['up'] else 'down'}, {'in' if o['in'] else 'out'}, "
            f"host {o['host']}, {o['addr']}, weight {o['weight']}"
            for o in os_
        ),
    )


def _osd_set(config: ClientConfig, osd_id: int, **changes: Any) -> None:
    epoch = with_master(config, "osd_set", {"osd_id": osd_id, **changes})["epoch"]
    click.echo(f"osd.{osd_id}: {', '.join(f'{k} {v}' for k, v in changes.items())} (epoch {epoch})")


@osd_admin_group.command("out")
@click.argument("osd_id", type=int)
@client_options
def osd_out(config: ClientConfig, osd_id: int) -> None:
    _osd_set(config, osd_id, **{"in": False})


@osd_admin_group.command("in")
@click.argument("osd_id", type=int)
@client_options
def osd_in(config: ClientConfig, osd_id: int) -> None:
    _osd_set(config, osd_id, **{"in": True})


@osd_admin_group.command("set")
@click.argument("flag")
@client_options
def osd_set_flag(config: ClientConfig, flag: str) -> None:
    """Set a cluster flag: noout (daemons that go down stay in: maintenance)."""
    result = with_master(config, "osd_flag", {"flag": flag, "on": True})
    click.echo(f"{flag} is set (epoch {result['epoch']})")


@osd_admin_group.command("unset")
@click.argument("flag")
@client_options
def osd_unset_flag(config: ClientConfig, flag: str) -> None:
    """Clear a cluster flag."""
    result = with_master(config, "osd_flag", {"flag": flag, "on": False})
    click.echo(f"{flag} is unset (epoch {result['epoch']})")


@osd_admin_group.command("rm")
@click.argument("osd_id", type=int)
@click.option(
    "--force",
    is_flag=True,
    help="Remove it even though some PGs are not active+clean (data only it holds is lost).",
)
@client_options
def osd_rm(config: ClientConfig, osd_id: int, force: bool) -> None:
    """Forget a stopped daemon that is out and whose data has moved elsewhere."""
    result = with_master(config, "osd_rm", {"osd_id": osd_id, "force": force})
    click.echo(f"osd.{osd_id} removed (epoch {result['epoch']})")


@osd_admin_group.command("reweight")
@click.argument("osd_id", type=int)
@click.argument("weight", type=float)
@client_options
def osd_reweight(config: ClientConfig, osd_id: int, weight: float) -> None:
    _osd_set(config, osd_id, weight=weight)


# --- keys ------------------------------------------------------------------------------


@click.group("auth")
def auth_group() -> None:
    """Client keys and capabilities."""


@auth_group.command("add")
@click.argument("name")
@click.option("--cap", "caps", multiple=True, help="POOL=r or POOL=rw (POOL may be *); repeatable.")
@click.option("--admin", is_flag=True, help="Full rights, including administration.")
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the key file here.",
)
@client_options
def auth_add(
    config: ClientConfig, name: str, caps: tuple[str, ...], admin: bool, output: Path | None
) -> None:
    parsed = auth.Caps.parse(caps, admin=admin)
    result = with_master(config, "auth_add", {"name": name, "caps": parsed.to_wire()})
    if output is not None:
        auth.write_keyfile(output, name, result["key"])
        click.echo(f"client {name} ({parsed.describe()}): key written to {output}")
    else:
        key = base64.b64encode(result["key"]).decode()
        click.echo(f'[client]\nname = "{name}"\nkey = "{key}"')


@auth_group.command("ls")
@click.option("--json", "as_json", is_flag=True)
@client_options
def auth_ls(config: ClientConfig, as_json: bool) -> None:
    clients = with_master(config, "auth_ls")["clients"]
    emit(
        clients,
        as_json,
        lambda cs: "\n".join(
            f"{c['name']}: {auth.Caps.from_wire(c['caps']).describe()}" for c in cs
        ),
    )


@auth_group.command("rm")
@click.argument("name")
@client_options
def auth_rm(config: ClientConfig, name: str) -> None:
    with_master(config, "auth_rm", {"name": name})
    click.echo(f"client {name} removed")
