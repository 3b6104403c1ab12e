"""Create, list, describe, resize, remove and unlock images.

Order of steps is chosen so that a command that dies half-way leaves nothing a user can
trip over, and running it again finishes the job:

- create writes the header (under a fresh id) and then the directory entry; a taken
  name removes the header again;
- shrink frees the objects past the new end first and records the new size after, so
  stale bytes can never reappear when the image grows again;
- remove marks the header ``removing`` (no writer may open it from then on), frees
  every data object, deletes the header and last drops the directory entry; a second
  ``rm`` of a half-removed image finishes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import trio

from store.client.api import Client
from store.errors import Code, RemoteError
from store.image import header as headers
from store.image import lock as locks
from store.image.errors import ImageBusy, ImageExists, ImageNotFound, InvalidImageArgument
from store.image.model import (
    DEFAULT_OBJECT_SIZE,
    ImageHeader,
    check_image_name,
    check_image_size,
    check_object_size,
    data_index,
    data_object,
    data_prefix,
    format_size,
    new_image_id,
)

# Past this many candidate objects, finding the ones that exist by listing the pool is
# cheaper than trying to delete every one of them.
LIST_OVER = 1024
DELETERS = 32


@dataclass(frozen=True)
class ImageUsage:
    objects: int  # data objects that exist
    bytes: int  # their total size


async def open_header(client: Client, pool: str, name: str) -> ImageHeader:
    image_id = await headers.lookup(client, pool, name)
    header, _ = await headers.read_header(client, pool, image_id, f"{pool}/{name}")
    return header


async def create_image(
    client: Client, pool: str, name: str, size: int, object_size: int = DEFAULT_OBJECT_SIZE
) -> ImageHeader:
    check_image_name(name)
    check_image_size(size)
    check_object_size(object_size)
    client.pool(pool)  # an unknown pool fails here, before anything is written
    try:
        await headers.lookup(client, pool, name)
        raise ImageExists(f"image {pool}/{name} already exists")
    except ImageNotFound:
        pass
    header = ImageHeader(
        id=new_image_id(), name=name, size=size, object_size=object_size, created=time.time()
    )
    await headers.write_new_header(client, pool, header)
    try:
        await headers.add_entry(client, pool, name, header.id)
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(client.config.timeout):
            await headers.delete_header(client, pool, header.id)
        raise
    return header


async def list_images(client: Client, pool: str) -> list[str]:
    client.pool(pool)
    return [name for name, _ in await headers.list_entries(client, pool)]


async def usage(client: Client, pool: str, header: ImageHeader) -> ImageUsage:
    """What the image occupies: its data objects that exist (one listing of the pool)."""
    found = await client.ls(pool, prefix=data_prefix(header.id))
    mine = [size for name, size in found if data_index(name, header.id) is not None]
    return ImageUsage(objects=len(mine), bytes=sum(mine))


async def resize_image(
    client: Client, pool: str, name: str, size: int, *, allow_shrink: bool = False
) -> ImageHeader:
    check_image_size(size)
    what = f"{pool}/{name}"
    image_id = await headers.lookup(client, pool, name)
    current, _ = await headers.read_header(client, pool, image_id, what)

    def refuse_if_busy(h: ImageHeader, shrinking: bool) -> None:
        if h.removing:
            raise ImageBusy(f"image {what} is being removed")
        now = time.time()
        if shrinking and h.lock is not None and not h.lock.expired(now):
            raise ImageBusy(
                f"image {what} is in use by {h.lock.describe(now)}: shrink it once no "
                "writer has it open (growing is allowed while in use)",
                owner=h.lock.owner,
            )

    if size < current.size:
        if not allow_shrink:
            raise InvalidImageArgument(
                f"shrinking image {what} from {format_size(current.size)} to "
                f"{format_size(size)} loses the data past the new end: add --allow-shrink"
            )
        refuse_if_busy(current, shrinking=True)
        await free_from(client, pool, current, size)

    def change(h: ImageHeader) -> ImageHeader:
        refuse_if_busy(h, shrinking=size < h.size)
        return replace(h, size=size)

    return await headers.update_header(client, pool, image_id, what, change)


async def remove_image(client: Client, pool: str, name: str) -> None:
    what = f"{pool}/{name}"
    image_id = await headers.lookup(client, pool, name)

    def mark(h: ImageHeader) -> ImageHeader:
        now = time.time()
        if h.lock is not None and not h.lock.expired(now) and not h.removing:
            raise ImageBusy(
                f"image {what} is in use by {h.lock.describe(now)}: stop that writer first "
                f"(or, if it is dead, `store image unlock {what} --force`)",
                owner=h.lock.owner,
            )
        return replace(h, removing=True, lock=None)

    try:
        header = await headers.update_header(client, pool, image_id, what, mark)
    except ImageNotFound:
        pass  # a remove that stopped after deleting the header: only the entry is left
    else:
        await delete_objects(client, pool, header.id, range(header.object_count))
        await headers.delete_header(client, pool, image_id)
    await headers.remove_entry(client, pool, name, image_id)


async def unlock_image(client: Client, pool: str, name: str, *, force: bool) -> locks.Lock | None:
    """Remove the image's lock; returns the lock that was removed (None: there was none)."""
    what = f"{pool}/{name}"
    image_id = await headers.lookup(client, pool, name)
    removed: list[locks.Lock | None] = [None]

    def change(h: ImageHeader) -> ImageHeader:
        locks.unlock(h.lock, what, now=time.time(), force=force)
        removed[0] = h.lock
        return h.with_lock(None)

    await headers.update_header(client, pool, image_id, what, change)
    return removed[0]


# --- freeing data ----------------------------------------------------------------------


async def free_from(client: Client, pool: str, header: ImageHeader, offset: int) -> None:
    """Free the image's bytes from ``offset`` on: cut the object it falls in, drop the rest."""
    first_whole = -(-offset // header.object_size)
    cut = offset % header.object_size
    if cut:
        name = data_object(header.id, offset // header.object_size)
        try:
            await client.execute(pool, name, [["truncate", cut]], {"exists": True})
        except RemoteError as exc:
            if exc.code != Code.ECANCELED:  # ECANCELED: the object does not exist
                raise
    await delete_objects(client, pool, header.id, range(first_whole, header.object_count))


async def delete_objects(client: Client, pool: str, image_id: str, indexes: range) -> int:
    """Delete the image's data objects with these indexes; returns how many existed."""
    targets: Sequence[int] = indexes
    if len(indexes) > LIST_OVER:
        listed = await client.ls(pool, prefix=data_prefix(image_id))
        found = (data_index(name, image_id) for name, _ in listed)
        targets = sorted(i for i in found if i is not None and i in indexes)
    deleted = 0
    send, receive = trio.open_memory_channel[int](0)

    async def deleter(indexes: trio.MemoryReceiveChannel[int]) -> None:
        nonlocal deleted
        async with indexes:
            async for index in indexes:
                try:
                    await client.delete(pool, data_object(image_id, index))
                    deleted += 1
                except RemoteError as exc:
                    if exc.code != Code.ENOENT:
                        raise

    async with trio.open_nursery() as nursery:
        async with receive:
            for _ in range(min(DELETERS, max(1, len(targets)))):
                nursery.start_soon(deleter, receive.clone())
        async with send:
            for index in targets:
                await send.send(index)
    return deleted
