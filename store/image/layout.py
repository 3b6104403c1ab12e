"""Where the bytes of an image live: ranges to object pieces, and extents; no I/O.

Image bytes ``[i * object_size, (i + 1) * object_size)`` are data object ``i``, at
offsets from 0. A request is cut where objects meet; each piece is one object, so the
pieces go to different placement groups and are sent in parallel.

For ``extents`` an object is described by its size: bytes up to it are data (the daemon
stores zero blocks sparsely, but the image does not know where), bytes past it and
every byte of a missing object are a hole that reads as zeros.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Piece:
    index: int  # data object
    offset: int  # within the object
    length: int
    start: int  # within the request: the piece is request bytes [start, start + length)

    @property
    def end(self) -> int:
        """Offset within the object where the piece ends."""
        return self.offset + self.length


@dataclass(frozen=True, slots=True)
class Extent:
    offset: int
    length: int
    hole: bool  # reads as zeros and takes no space

    @property
    def end(self) -> int:
        return self.offset + self.length


def pieces(offset: int, length: int, object_size: int) -> Iterator[Piece]:
    """Cut image bytes ``[offset, offset + length)`` at object boundaries."""
    if offset < 0 or length < 0:
        raise ValueError(f"bad range: offset {offset}, length {length}")
    position, end = offset, offset + length
    while position < end:
        index, within = divmod(position, object_size)
        n = min(object_size - within, end - position)
        yield Piece(index=index, offset=within, length=n, start=position - offset)
        position += n


def objects_spanned(offset: int, length: int, object_size: int) -> range:
    """Indexes of the objects that bytes ``[offset, offset + length)`` touch."""
    if length <= 0:
        return range(0)
    return range(offset // object_size, (offset + length - 1) // object_size + 1)


def extents(
    offset: int, length: int, object_size: int, sizes: Mapping[int, int | None]
) -> list[Extent]:
    """Extents of ``[offset, offset + length)`` from what is known of its objects.

    ``sizes`` maps an object index to its size, or None when the object does not exist.
    The answer stops at the first object not in ``sizes`` (nothing is known there), so
    it may cover less than asked for but always starts at ``offset`` when it is not
    empty. Neighbouring extents of the same kind are merged.
    """
    out: list[Extent] = []

    def add(start: int, n: int, hole: bool) -> None:
        if n <= 0:
            return
        if out and out[-1].hole == hole and out[-1].end == start:
            last = out.pop()
            out.append(Extent(last.offset, last.length + n, hole))
        else:
            out.append(Extent(start, n, hole))

    for piece in pieces(offset, length, object_size):
        if piece.index not in sizes:
            break
        size = sizes[piece.index]
        base = piece.index * object_size
        filled = 0 if size is None else min(max(size, 0), object_size)
        data_end = min(piece.end, filled)
        if data_end > piece.offset:
            add(base + piece.offset, data_end - piece.offset, hole=False)
        hole_start = max(piece.offset, filled)
        add(base + hole_start, piece.end - hole_start, hole=True)
    return out
