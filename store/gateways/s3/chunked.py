"""The aws-chunked body encoding: an incremental decoder that checks every chunk signature.

Theory of operation
-------------------
A body sent with ``x-amz-content-sha256: STREAMING-...`` is framed in chunks, each
``<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n``, ended by a chunk of size 0 and,
in the ``-TRAILER`` modes, by trailing headers (``x-amz-checksum-crc32:...``) and an empty
line. (This framing is inside the HTTP body: HTTP's own chunked transfer-encoding, if any,
has already been removed by the server.)

In the signed modes each chunk signs ``AWS4-HMAC-SHA256-PAYLOAD``, the request time and
scope, the previous signature (the request's own for the first chunk), the hash of the
empty string and the hash of the chunk's data; the trailer, when there is one, is signed
the same way with ``AWS4-HMAC-SHA256-TRAILER`` over its canonical lines. So a chunk cannot
be dropped, reordered or altered without breaking the chain.

The decoder is fed bytes as they arrive and returns the data they complete. Data is handed
out before its chunk's signature has been checked (a chunk may be megabytes, and holding it
would cost memory): callers must not publish anything until :meth:`finish` has returned,
which is when the whole chain has been verified. Every size is bounded; hostile framing is
an :class:`S3Error`, never an exception of another kind.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from store.gateways.s3 import errors, sigv4
from store.gateways.s3.errors import S3Error

MAX_LINE = 4096  # a chunk header or one trailer line
MAX_TRAILER_BYTES = 16 * 1024
MAX_CHUNK = 1 << 40


@dataclass(frozen=True)
class ChunkSigning:
    """What a signed aws-chunked body is verified with: the request's verified signature."""

    key: bytes
    amz_date: str
    scope: str
    seed_signature: str


def malformed(detail: str) -> S3Error:
    return errors.S3Error("InvalidRequest", 400, f"Malformed aws-chunked body: {detail}")


class ChunkedDecoder:
    """Feed raw aws-chunked bytes with :meth:`feed`; call :meth:`finish` at the end."""

    def __init__(
        self,
        mode: str,
        *,
        signing: ChunkSigning | None,
        decoded_length: int | None,
        trailer_names: tuple[str, ...] = (),
    ) -> None:
        if mode not in (
            sigv4.STREAMING_SIGNED,
            sigv4.STREAMING_SIGNED_TRAILER,
            sigv4.STREAMING_UNSIGNED_TRAILER,
        ):
            raise errors.not_implemented("x-amz-content-sha256")
        self.signed = mode != sigv4.STREAMING_UNSIGNED_TRAILER
        self.with_trailer = mode != sigv4.STREAMING_SIGNED
        if self.signed and signing is None:
            raise ValueError("a signed aws-chunked body needs the request's signing context")
        self.signing = signing
        self.previous = signing.seed_signature if signing else ""
        self.decoded_length = decoded_length
        self.trailer_names = trailer_names
        self.trailers: dict[str, str] = {}
        self.received = 0  # decoded bytes so far
        self._buf = bytearray()
        self._state = "header"
        self._remaining = 0  # bytes of the current chunk still to come
        self._chunk_signature = ""
        self._chunk_hash = hashlib.sha256()
        self._trailer_lines: list[tuple[str, str]] = []
        self._trailer_bytes = 0
        self._trailer_signature: str | None = None

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, data: bytes) -> list[bytes]:
        """Decode what ``data`` completes; returns the payload bytes, in order."""
        if self._state == "done":
            if data:
                raise malformed("bytes after the end of the body")
            return []
        self._buf += data
        out: list[bytes] = []
        pos = 0
        buf = self._buf
        while pos < len(buf):
            if self._state == "data":
                take = min(self._remaining, len(buf) - pos)
                piece = bytes(buf[pos : pos + take])
                pos += take
                self._remaining -= take
                self.received += take
                if self.signed:
                    self._chunk_hash.update(piece)
                if piece:
                    out.append(piece)
                if self._remaining == 0:
                    self._state = "data_end"
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_LINE:
                    raise malformed("line too long")
                break
            line = bytes(buf[pos:end])
            pos = end + 2
            if len(line) > MAX_LINE:
                raise malformed("line too long")
            self._line(line)
            if self._state == "done":
                if pos != len(buf):
                    raise malformed("bytes after the end of the body")
                break
        del buf[:pos]
        if self.decoded_length is not None and self.received > self.decoded_length:
            raise errors.incomplete_body()
        return out

    def _line(self, line: bytes) -> None:
        if self._state == "header":
            self._chunk_header(line)
        elif self._state == "data_end":
            if line:
                raise malformed("chunk data longer than its size")
            self._end_chunk()
        elif self._state == "final":
            # The empty line after the last chunk of a body without a trailer.
            if line:
                raise malformed("expected the end of the body")
            self._state = "done"
        elif self._state == "trailer":
            self._trailer_line(line)

    def _chunk_header(self, line: bytes) -> None:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise malformed("chunk header is not ASCII") from None
        size_text, _, extension = text.partition(";")
        size_text = size_text.strip()
        if (
            not size_text
            or len(size_text) > 16
            or any(c not in "0123456789abcdefABCDEF" for c in size_text)
        ):
            raise malformed(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size > MAX_CHUNK:
            raise malformed("chunk too large")
        if self.signed:
            name, sep, signature = extension.strip().partition("=")
            if name != "chunk-signature" or not sep or len(signature) != 64:
                raise malformed("chunk without a chunk-signature")
            self._chunk_signature = signature
            self._chunk_hash = hashlib.sha256()
        self._remaining = size
        if size == 0:
            self._end_chunk(last=True)
        else:
            self._state = "data"

    def _end_chunk(self, *, last: bool = False) -> None:
        if self.signed:
            assert self.signing is not None
            text = "\n".join(
                [
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    self.signing.amz_date,
                    self.signing.scope,
                    self.previous,
                    sigv4.EMPTY_SHA256,
                    self._chunk_hash.hexdigest(),
                ]
            )
            expected = sigv4.sign(self.signing.key, text)
            if not hmac.compare_digest(expected, self._chunk_signature):
                raise errors.signature_does_not_match(text, self._chunk_signature, "", "")
            self.previous = self._chunk_signature
        if not last:
            self._state = "header"
        elif self.with_trailer:
            self._state = "trailer"
        else:
            self._state = "final"

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self._finish_trailer()
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise malformed("trailer too large")
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise malformed("trailer is not ASCII") from None
        name, sep, value = text.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise malformed("bad trailer line")
        value = value.strip()
        if name == "x-amz-trailer-signature":
            self._trailer_signature = value
            return
        if name in self.trailers:
            raise malformed(f"trailer {name} sent twice")
        if self._trailer_signature is not None:
            raise malformed("trailer after the trailer signature")
        self.trailers[name] = value
        self._trailer_lines.append((name, value))

    def _finish_trailer(self) -> None:
        if self.signed:
            assert self.signing is not None
            if self._trailer_signature is None:
                raise malformed("signed trailer without x-amz-trailer-signature")
            canonical = "".join(f"{name}:{value}\n" for name, value in self._trailer_lines)
            text = "\n".join(
                [
                    "AWS4-HMAC-SHA256-TRAILER",
                    self.signing.amz_date,
                    self.signing.scope,
                    self.previous,
                    hashlib.sha256(sigv4.as_sent(canonical)).hexdigest(),
                ]
            )
            expected = sigv4.sign(self.signing.key, text)
            if not hmac.compare_digest(expected, self._trailer_signature):
                raise errors.signature_does_not_match(text, self._trailer_signature, "", "")
        for name in self.trailer_names:
            if name not in self.trailers:
                raise malformed(f"the trailer {name} named by x-amz-trailer was not sent")
        self._state = "done"

    def finish(self) -> None:
        """Check that the body ended where the framing says it should."""
        if self._state != "done" or self._buf:
            raise errors.incomplete_body()
        if self.decoded_length is not None and self.received != self.decoded_length:
            raise errors.incomplete_body()
