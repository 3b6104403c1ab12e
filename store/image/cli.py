"""``store image ...``: block images in a pool."""

from __future__ import annotations

import datetime
import time
from typing import Any

import click

from store.client.api import Client
from store.client.cli import client_options, emit, with_client
from store.client.config import ClientConfig
from store.image import admin
from store.image.errors import ImageError
from store.image.model import (
    DEFAULT_OBJECT_SIZE,
    ImageHeader,
    format_size,
    parse_image_spec,
    parse_size,
)


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ImageError as exc:
        raise click.BadParameter(str(exc)) from None


def _spec(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, str]:
    try:
        return parse_image_spec(value)
    except ImageError as exc:
        raise click.BadParameter(str(exc)) from None


def header_dict(pool: str, header: ImageHeader) -> dict[str, Any]:
    lock = None
    if header.lock is not None:
        lock = {
            "owner": header.lock.owner,
            "holder": header.lock.holder,
            "expires": header.lock.expires,
            "expired": header.lock.expired(time.time()),
        }
    return {
        "pool": pool,
        "name": header.name,
        "id": header.id,
        "size": header.size,
        "object_size": header.object_size,
        "objects": header.object_count,
        "created": header.created,
        "lock": lock,
        "removing": header.removing,
    }


def _info_text(d: dict[str, Any]) -> str:
    created = datetime.datetime.fromtimestamp(d["created"]).isoformat(timespec="seconds")
    lines = [
        f"image {d['pool']}/{d['name']}:",
        f"  size {format_size(d['size'])} ({d['size']} bytes) in {d['objects']} objects "
        f"of {format_size(d['object_size'])}",
        f"  id {d['id']}, data objects rbd_data.{d['id']}.*",
        f"  created {created}",
    ]
    if "used_objects" in d:
        lines.append(
            f"  provisioned {d['used_objects']} objects, {format_size(d['used_bytes'])} written"
        )
    lock = d["lock"]
    if lock is None:
        lines.append("  not locked")
    else:
        left = lock["expires"] - time.time()
        lease = f"lease ends in {left:.0f} s" if left > 0 else "lease expired"
        lines.append(f"  locked by {lock['owner']} ({lease})")
    if d["removing"]:
        lines.append("  being removed: run `store image rm` again to finish")
    return "\n".join(lines)


@click.group("image")
def image_group() -> None:
    """Block images (thin-provisioned virtual disks), served over NBD by `store nbd`."""


@image_group.command("create")
@click.argument("spec", metavar="POOL/NAME", callback=_spec)
@click.option("--size", required=True, callback=_size, help="Size, e.g. 10G (binary units).")
@click.option(
    "--object-size",
    default=None,
    callback=_size,
    help=f"Bytes per data object, a power of two from 4K to 32M [default: {format_size(DEFAULT_OBJECT_SIZE)}].",
)
@client_options
def create_command(
    config: ClientConfig, spec: tuple[str, str], size: int, object_size: int | None
) -> None:
    """Create an image; it takes no space until written."""
    pool, name = spec
    header = with_client(
        config,
        lambda c: admin.create_image(c, pool, name, size, object_size or DEFAULT_OBJECT_SIZE),
    )
    click.echo(
        f"image {pool}/{name} created: {format_size(header.size)}, objects of "
        f"{format_size(header.object_size)}, id {header.id}"
    )


@image_group.command("ls")
@click.argument("pool")
@click.option("--json", "as_json", is_flag=True)
@client_options
def ls_command(config: ClientConfig, pool: str, as_json: bool) -> None:
    """List the images of a pool."""
    names = with_client(config, lambda c: admin.list_images(c, pool))
    emit(names, as_json, lambda d: "\n".join(d))


@image_group.command("info")
@click.argument("spec", metavar="POOL/NAME", callback=_spec)
@click.option("--usage", is_flag=True, help="Also count the data objects written (lists the pool).")
@click.option("--json", "as_json", is_flag=True)
@client_options
def info_command(config: ClientConfig, spec: tuple[str, str], usage: bool, as_json: bool) -> None:
    """Size, object size, id, creation time and lock of an image."""
    pool, name = spec

    async def run(client: Client) -> dict[str, Any]:
        header = await admin.open_header(client, pool, name)
        info = header_dict(pool, header)
        if usage:
            used = await admin.usage(client, pool, header)
            info.update(used_objects=used.objects, used_bytes=used.bytes)
        return info

    emit(with_client(config, run), as_json, _info_text)


@image_group.command("resize")
@click.argument("spec", metavar="POOL/NAME", callback=_spec)
@click.option("--size", required=True, callback=_size, help="The new size, e.g. 20G.")
@click.option(
    "--allow-shrink", is_flag=True, help="Allow a smaller size: the data past it is freed."
)
@client_options
def resize_command(
    config: ClientConfig, spec: tuple[str, str], size: int, allow_shrink: bool
) -> None:
    """Grow (or, with --allow-shrink, shrink) an image."""
    pool, name = spec
    header = with_client(
        config, lambda c: admin.resize_image(c, pool, name, size, allow_shrink=allow_shrink)
    )
    click.echo(f"image {pool}/{name}: size {format_size(header.size)} ({header.size} bytes)")


@image_group.command("rm")
@click.argument("spec", metavar="POOL/NAME", callback=_spec)
@client_options
def rm_command(config: ClientConfig, spec: tuple[str, str]) -> None:
    """Remove an image and free all its data."""
    pool, name = spec
    with_client(config, lambda c: admin.remove_image(c, pool, name))
    click.echo(f"image {pool}/{name} removed")


@image_group.command("unlock")
@click.argument("spec", metavar="POOL/NAME", callback=_spec)
@click.option("--force", is_flag=True, help="Break a lock whose lease is still running.")
@client_options
def unlock_command(config: ClientConfig, spec: tuple[str, str], force: bool) -> None:
    """Remove the writer's lock of an image (an expired one, or any with --force)."""
    pool, name = spec
    removed = with_client(config, lambda c: admin.unlock_image(c, pool, name, force=force))
    if removed is None:
        click.echo(f"image {pool}/{name} was not locked")
    else:
        click.echo(f"image {pool}/{name} unlocked (was locked by {removed.owner})")
