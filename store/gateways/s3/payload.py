"""A request's payload as the S3 operation sees it: decoded, measured and verified.

The HTTP server hands over the body bytes (its own chunked framing removed); this layer
removes aws-chunked framing when the signature says the body uses it, feeds every byte to
the digests (hashed beside the event loop, ``digest_feed``), and at the end checks
everything that was declared: the payload SHA-256 of a signed request, the chunk signature
chain, Content-MD5, ``x-amz-checksum-*`` (header or trailer) and the length. Only then may
the caller publish what it wrote.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence

from store.gateways.s3 import checksums, errors, sigv4
from store.gateways.s3.checksums import BodyDigests
from store.gateways.s3.chunked import ChunkedDecoder, ChunkSigning
from store.gateways.s3.digest_feed import DigestFeed
from store.gateways.web.server import BodyError, ClientDisconnected, MalformedBody


def _length_header(headers: Sequence[tuple[str, str]], name: str) -> int | None:
    value = sigv4.header_value(headers, name)
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 19:
        raise errors.invalid_argument(f"Invalid {name} header", name, value)
    return int(value)


class Payload:
    """Iterate to get the decoded body; then call :meth:`finish`."""

    def __init__(
        self,
        source: AsyncIterable[bytes],
        headers: Sequence[tuple[str, str]],
        *,
        payload_hash: str | None,
        signing: ChunkSigning | None,
        wire_length: int | None,
        chunked_transfer: bool,
        object_checksums: bool = True,
        default_algorithm: str | None = None,
    ) -> None:
        """``object_checksums=False``: the x-amz-checksum-* headers describe something else
        than this body (CompleteMultipartUpload's describe the object). ``default_algorithm``
        is computed when the request names none (the parts of an upload that chose one)."""
        self.source = source
        self.decoder: ChunkedDecoder | None = None
        if not object_checksums:
            headers = [(n, v) for n, v in headers if not n.startswith("x-amz-checksum-")]
        expected = checksums.expected_from_headers(headers)
        if expected.algorithm is None and default_algorithm is not None:
            expected = checksums.Expected(expected.md5, default_algorithm, None)
        if payload_hash in sigv4.STREAMING_MODES:
            decoded = _length_header(headers, "x-amz-decoded-content-length")
            if decoded is None:
                raise errors.missing_content_length()
            trailer = sigv4.header_value(headers, "x-amz-trailer")
            self.decoder = ChunkedDecoder(
                payload_hash or "",
                signing=signing if payload_hash != sigv4.STREAMING_UNSIGNED_TRAILER else None,
                decoded_length=decoded,
                trailer_names=(trailer.strip().lower(),) if trailer else (),
            )
            self.length: int | None = decoded
            sha256 = None
        else:
            if wire_length is None and not chunked_transfer:
                self.length = 0
            else:
                self.length = wire_length
            sha256 = (
                payload_hash
                if payload_hash is not None and payload_hash != sigv4.UNSIGNED_PAYLOAD
                else None
            )
        self.digests = BodyDigests(expected, payload_sha256=sha256)
        self._feed = DigestFeed(self.digests)
        self.received = 0
        self._finished = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        try:
            async for raw in self.source:
                pieces = self.decoder.feed(raw) if self.decoder is not None else [raw]
                for piece in pieces:
                    self.received += len(piece)
                    if self.length is not None and self.received > self.length:
                        raise errors.incomplete_body()
                    await self._feed.update(piece)
                    yield piece
            await self._feed.flush()
        except ClientDisconnected:
            raise
        except MalformedBody:
            raise errors.incomplete_body() from None
        except BodyError:
            raise errors.incomplete_body() from None

    async def read_all(self, limit: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for piece in self:
            size += len(piece)
            if size > limit:
                raise errors.S3Error("MaxMessageLengthExceeded", 400, "Your request was too big.")
            parts.append(piece)
        return b"".join(parts)

    def finish(self) -> tuple[str, tuple[str, str] | None]:
        """Verify the whole payload; returns its ETag (hex MD5) and checksum."""
        trailers: dict[str, str] = {}
        if self.decoder is not None:
            self.decoder.finish()
            trailers = self.decoder.trailers
        if self.length is not None and self.received != self.length:
            raise errors.incomplete_body()
        if not self._feed.idle:
            raise RuntimeError("a payload is verified only once it has been read whole")
        return self.digests.finish(trailers)
