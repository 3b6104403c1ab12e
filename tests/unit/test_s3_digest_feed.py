"""Body digests hashed in a worker thread see every byte, in order."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import zlib

import pytest
import trio

from store.gateways.s3.checksums import BodyDigests, Expected
from store.gateways.s3.digest_feed import DigestFeed
from store.gateways.s3.payload import Payload


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def pieces_of(data: bytes, sizes: list[int]) -> list[bytes]:
    out, position = [], 0
    while position < len(data):
        size = sizes[len(out) % len(sizes)]
        out.append(data[position : position + size])
        position += size
    return out


async def test_batches_are_hashed_in_order_in_a_thread() -> None:
    body = os.urandom(3 * 1024 * 1024 + 12345)
    digests = BodyDigests(Expected(None, "crc32", None), payload_sha256="x")
    feed = DigestFeed(digests, batch=100_000)
    threads: set[str] = set()
    hash_batch = feed._hash

    def recording(pieces: list[bytes]) -> None:
        threads.add(threading.current_thread().name)
        hash_batch(pieces)

    feed._hash = recording  # type: ignore[method-assign]
    for piece in pieces_of(body, [65536, 1, 7000, 300_000]):
        await feed.update(piece)
    await feed.flush()
    assert feed.idle
    assert digests.md5.hexdigest() == hashlib.md5(body).hexdigest()
    assert digests._sha256 is not None
    assert digests._sha256.hexdigest() == hashlib.sha256(body).hexdigest()
    assert digests.size == len(body)
    # Hashed off the event loop (the last few bytes may be hashed on it).
    assert threads - {threading.current_thread().name}


async def test_a_small_body_is_hashed_where_it_ends() -> None:
    digests = BodyDigests(Expected(None, None, None))
    feed = DigestFeed(digests, batch=1 << 20)
    await feed.update(b"hello ")
    await feed.update(b"world")
    assert not feed.idle
    await feed.flush()
    assert feed.idle
    assert digests.md5.hexdigest() == hashlib.md5(b"hello world").hexdigest()


async def test_a_cancelled_wait_leaves_the_digests_whole() -> None:
    body = os.urandom(2 * 1024 * 1024)
    digests = BodyDigests(Expected(None, None, None))
    feed = DigestFeed(digests, batch=1024 * 1024)
    await feed.update(body[: 1024 * 1024])  # handed to a thread, not waited for
    with trio.CancelScope() as scope:
        scope.cancel()
        await feed.update(body[1024 * 1024 :])  # would wait for the first batch
    assert scope.cancelled_caught
    await feed.flush()
    assert feed.idle
    assert digests.md5.hexdigest() == hashlib.md5(body).hexdigest()


async def test_a_large_payload_is_verified_whole() -> None:
    body = os.urandom(5 * 1024 * 1024 + 3)

    async def source() -> object:
        for piece in pieces_of(body, [65536]):
            yield piece

    payload = Payload(
        source(),  # type: ignore[arg-type]
        [("x-amz-checksum-crc32", crc32_b64(body))],
        payload_hash=hashlib.sha256(body).hexdigest(),
        signing=None,
        wire_length=len(body),
        chunked_transfer=False,
    )
    got = b"".join([piece async for piece in payload])
    assert got == body
    etag, checksum = payload.finish()
    assert etag == hashlib.md5(body).hexdigest()
    assert checksum == ("crc32", crc32_b64(body))


async def test_a_payload_left_half_read_is_not_verified() -> None:
    body = os.urandom(1024 * 1024)

    async def source() -> object:
        yield body
        yield body

    payload = Payload(
        source(),  # type: ignore[arg-type]
        [],
        payload_hash=None,
        signing=None,
        wire_length=None,
        chunked_transfer=True,
    )
    async for _ in payload:
        break  # the first piece went to a thread, nobody waited for it
    with pytest.raises(RuntimeError):
        payload.finish()
