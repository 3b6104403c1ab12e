"""aws-chunked decoding: the documented signed example, botocore's own unsigned-trailer
encoder, signed trailers, arbitrary splits of the input, and hostile framing."""

from __future__ import annotations

import base64
import hashlib
import io
import zlib

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum
from hypothesis import given, settings
from hypothesis import strategies as st

from store.gateways.s3 import sigv4
from store.gateways.s3.chunked import ChunkedDecoder, ChunkSigning
from store.gateways.s3.errors import S3Error

# The worked example of AWS's "Signature Calculations for the Authorization Header:
# Transferring Payload in Multiple Chunks": 66560 bytes of "a" in chunks of 65536.
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EXAMPLE_DATE = "20130524T000000Z"
EXAMPLE_SCOPE = "20130524/us-east-1/s3/aws4_request"
EXAMPLE_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
EXAMPLE_CHUNK_SIGNATURES = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]


def example_signing() -> ChunkSigning:
    key = sigv4.signing_key(EXAMPLE_SECRET, "20130524", "us-east-1")
    return ChunkSigning(key, EXAMPLE_DATE, EXAMPLE_SCOPE, EXAMPLE_SEED)


def test_seed_signature_of_the_documented_example() -> None:
    headers = [
        ("host", "s3.amazonaws.com"),
        ("x-amz-date", EXAMPLE_DATE),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("x-amz-content-sha256", sigv4.STREAMING_SIGNED),
        ("content-encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"),
        ("content-length", "66824"),
    ]
    signed = sorted(name for name, _ in headers)
    canonical = sigv4.canonical_request(
        "PUT", "/examplebucket/chunkObject.txt", "", headers, signed, sigv4.STREAMING_SIGNED
    )
    key = sigv4.signing_key(EXAMPLE_SECRET, "20130524", "us-east-1")
    text = sigv4.string_to_sign(EXAMPLE_DATE, EXAMPLE_SCOPE, canonical)
    assert sigv4.sign(key, text) == EXAMPLE_SEED


def example_body() -> bytes:
    sizes = [65536, 1024, 0]
    out = b""
    for size, signature in zip(sizes, EXAMPLE_CHUNK_SIGNATURES, strict=True):
        out += f"{size:x};chunk-signature={signature}\r\n".encode() + b"a" * size + b"\r\n"
    return out


def test_documented_signed_chunks_decode() -> None:
    decoder = ChunkedDecoder(
        sigv4.STREAMING_SIGNED, signing=example_signing(), decoded_length=66560
    )
    data = b"".join(decoder.feed(example_body()))
    decoder.finish()
    assert data == b"a" * 66560


def test_a_tampered_chunk_breaks_the_chain() -> None:
    body = bytearray(example_body())
    body[200] = ord("b")
    decoder = ChunkedDecoder(
        sigv4.STREAMING_SIGNED, signing=example_signing(), decoded_length=66560
    )
    with pytest.raises(S3Error) as caught:
        decoder.feed(bytes(body))
    assert caught.value.code == "SignatureDoesNotMatch"


def test_dropping_the_final_chunk_is_incomplete() -> None:
    body = example_body()
    cut = body.index(b"0;chunk-signature")
    decoder = ChunkedDecoder(
        sigv4.STREAMING_SIGNED, signing=example_signing(), decoded_length=66560
    )
    decoder.feed(body[:cut])
    with pytest.raises(S3Error) as caught:
        decoder.finish()
    assert caught.value.code == "IncompleteBody"


def sign_chunks(
    data: bytes, chunk: int, signing: ChunkSigning, trailer: dict[str, str] | None
) -> bytes:
    """A signed aws-chunked encoding (with a signed trailer when given)."""
    previous = signing.seed_signature
    out = b""
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] + [b""]
    for piece in pieces:
        text = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                signing.amz_date,
                signing.scope,
                previous,
                sigv4.EMPTY_SHA256,
                hashlib.sha256(piece).hexdigest(),
            ]
        )
        previous = sigv4.sign(signing.key, text)
        out += f"{len(piece):x};chunk-signature={previous}\r\n".encode() + piece
        if piece or trailer is None:
            out += b"\r\n"
    if trailer is not None:
        canonical = "".join(f"{k}:{v}\n" for k, v in trailer.items())
        text = "\n".join(
            [
                "AWS4-HMAC-SHA256-TRAILER",
                signing.amz_date,
                signing.scope,
                previous,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        for name, value in trailer.items():
            out += f"{name}:{value}\r\n".encode()
        out += f"x-amz-trailer-signature:{sigv4.sign(signing.key, text)}\r\n\r\n".encode()
    return out


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def test_signed_trailer() -> None:
    data = bytes(range(256)) * 300
    trailer = {"x-amz-checksum-crc32": crc32_b64(data)}
    body = sign_chunks(data, 8192, example_signing(), trailer)
    decoder = ChunkedDecoder(
        sigv4.STREAMING_SIGNED_TRAILER,
        signing=example_signing(),
        decoded_length=len(data),
        trailer_names=("x-amz-checksum-crc32",),
    )
    assert b"".join(decoder.feed(body)) == data
    decoder.finish()
    assert decoder.trailers == trailer


def test_forged_trailer_is_refused() -> None:
    data = b"payload" * 100
    body = sign_chunks(data, 256, example_signing(), {"x-amz-checksum-crc32": crc32_b64(data)})
    forged = body.replace(crc32_b64(data).encode(), crc32_b64(b"other").encode())
    decoder = ChunkedDecoder(
        sigv4.STREAMING_SIGNED_TRAILER, signing=example_signing(), decoded_length=len(data)
    )
    with pytest.raises(S3Error) as caught:
        decoder.feed(forged)
    assert caught.value.code == "SignatureDoesNotMatch"


def botocore_unsigned(data: bytes, chunk: int) -> bytes:
    wrapper = AwsChunkedWrapper(
        io.BytesIO(data),
        checksum_cls=Crc32Checksum,
        checksum_name="x-amz-checksum-crc32",
        chunk_size=chunk,
    )
    return wrapper.read()


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=5000),
    chunk=st.integers(min_value=1, max_value=2000),
    cuts=st.lists(st.integers(min_value=0, max_value=7000), max_size=8),
)
def test_unsigned_trailer_from_botocore_in_any_split(
    data: bytes, chunk: int, cuts: list[int]
) -> None:
    body = botocore_unsigned(data, chunk)
    decoder = ChunkedDecoder(
        sigv4.STREAMING_UNSIGNED_TRAILER,
        signing=None,
        decoded_length=len(data),
        trailer_names=("x-amz-checksum-crc32",),
    )
    out = b""
    start = 0
    for cut in sorted({min(c, len(body)) for c in cuts} | {len(body)}):
        out += b"".join(decoder.feed(body[start:cut]))
        start = cut
    decoder.finish()
    assert out == data
    assert decoder.trailers["x-amz-checksum-crc32"] == crc32_b64(data)


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=1, max_size=3000), chunk=st.integers(min_value=1, max_value=700))
def test_signed_chunks_byte_by_byte(data: bytes, chunk: int) -> None:
    body = sign_chunks(data, chunk, example_signing(), None)
    decoder = ChunkedDecoder(
        sigv4.STREAMING_SIGNED, signing=example_signing(), decoded_length=len(data)
    )
    out = b"".join(piece for i in range(len(body)) for piece in decoder.feed(body[i : i + 1]))
    decoder.finish()
    assert out == data


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n0\r\n\r\n",  # size not hex
        b"3\r\nabcdef\r\n0\r\n\r\n",  # data longer than its size
        b"-3\r\nabc\r\n0\r\n\r\n",
        b"1" * 5000,  # a header line that never ends
        b"3\r\nabc\r\n0\r\nbad trailer line\r\n\r\n",
        b"3\r\nabc\r\n0\r\n\r\nextra",  # bytes after the end
        b"\xff\xfe\r\n",
        b"3\r\nabc\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",
    ],
)
def test_hostile_framing_is_an_s3_error(body: bytes) -> None:
    decoder = ChunkedDecoder(sigv4.STREAMING_UNSIGNED_TRAILER, signing=None, decoded_length=None)
    with pytest.raises(S3Error) as caught:
        decoder.feed(body)
        decoder.finish()
    assert caught.value.status == 400


def test_signed_mode_needs_signatures() -> None:
    decoder = ChunkedDecoder(sigv4.STREAMING_SIGNED, signing=example_signing(), decoded_length=3)
    with pytest.raises(S3Error):
        decoder.feed(b"3\r\nabc\r\n0\r\n\r\n")


def test_more_data_than_declared() -> None:
    decoder = ChunkedDecoder(sigv4.STREAMING_UNSIGNED_TRAILER, signing=None, decoded_length=2)
    with pytest.raises(S3Error) as caught:
        decoder.feed(b"3\r\nabc\r\n")
    assert caught.value.code == "IncompleteBody"


def test_declared_trailer_must_come() -> None:
    decoder = ChunkedDecoder(
        sigv4.STREAMING_UNSIGNED_TRAILER,
        signing=None,
        decoded_length=3,
        trailer_names=("x-amz-checksum-sha256",),
    )
    with pytest.raises(S3Error):
        decoder.feed(b"3\r\nabc\r\n0\r\n\r\n")


def test_ecdsa_streaming_is_not_implemented() -> None:
    with pytest.raises(S3Error) as caught:
        ChunkedDecoder(sigv4.STREAMING_ECDSA, signing=None, decoded_length=0)
    assert caught.value.code == "NotImplemented"
