"""AWS Signature Version 4 as S3 uses it: canonical requests, signing keys, verification.

Theory of operation
-------------------
A client signs a *canonical request*: the method, the URI-encoded path, the sorted and
URI-encoded query, the headers it names in ``SignedHeaders`` (lower-cased names, values
trimmed, repeats joined by commas), that list, and the payload hash (the hex SHA-256 of the
body, or ``UNSIGNED-PAYLOAD``, or one of the ``STREAMING-...`` markers of aws-chunked
bodies). The *string to sign* wraps the SHA-256 of that with the algorithm, the request
time and the credential scope ``date/region/s3/aws4_request``; the signature is an HMAC
under a key derived from the secret through that same scope.

The server cannot see the client's canonical request, only the bytes on the wire, so it
rebuilds it. For S3 the path is not normalised: each character of the decoded key is
encoded once, keeping ``/``. A client that encoded its path differently from the strict
rule (or sent ``+`` in a query meaning a space) signed a different string, so when the
strict form does not match, the forms a client may legitimately have signed are tried too:
the path exactly as sent, and ``+`` read as a space. Every one of them is a faithful
rendering of the same request, so accepting any does not widen what a signature allows.

Two carriers: the ``Authorization`` header, and presigned URLs whose ``X-Amz-*`` query
parameters carry the same fields plus an expiry (1 s to 7 days). Everything here is pure:
parsing raises :class:`S3Error` with the code S3 answers, and :func:`verify` needs the
secret, which the caller looks up by access key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import quote, unquote

from store.gateways.s3 import errors
from store.gateways.s3.errors import S3Error

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
TERMINAL = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_ECDSA = "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"
STREAMING_ECDSA_TRAILER = "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
STREAMING_MODES = frozenset(
    {
        STREAMING_SIGNED,
        STREAMING_SIGNED_TRAILER,
        STREAMING_UNSIGNED_TRAILER,
        STREAMING_ECDSA,
        STREAMING_ECDSA_TRAILER,
    }
)
MAX_EXPIRES = 7 * 24 * 3600
MAX_SKEW = timedelta(minutes=15)
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_PRESIGN_PARAMS = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)
_HEX = frozenset("0123456789abcdef")

# The constructor of the "malformed authorization" error of the carrier at hand.
MalformedError = Callable[..., S3Error]


# --- canonical forms ---------------------------------------------------------------------


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """AWS's UriEncode: every byte but A-Z a-z 0-9 - _ . ~ as %XX (and / when kept)."""
    return quote(text, safe="/~" if keep_slash else "~")


def split_query(raw_query: str) -> list[tuple[str, str]]:
    """The raw ``name=value`` pairs of a query, still percent-encoded, in order."""
    if not raw_query:
        return []
    pairs = []
    for part in raw_query.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


def decode_component(raw: str, *, plus_is_space: bool = False) -> str:
    """Percent-decode one URL component as UTF-8; bad encodings are an InvalidURI."""
    if plus_is_space:
        raw = raw.replace("+", " ")
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise errors.invalid_uri() from None


def canonical_query(raw_pairs: Sequence[tuple[str, str]], *, plus_is_space: bool = False) -> str:
    encoded = sorted(
        (
            uri_encode(decode_component(name, plus_is_space=plus_is_space)),
            uri_encode(decode_component(value, plus_is_space=plus_is_space)),
        )
        for name, value in raw_pairs
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> str:
    """The ``name:value`` lines (each ending in a newline) for the signed header names."""
    lines = []
    for name in signed:
        values = [" ".join(value.split()) for key, value in headers if key == name]
        lines.append(f"{name}:{','.join(values)}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    uri: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    signed: Sequence[str],
    payload_hash: str,
) -> str:
    return "\n".join(
        [
            method,
            uri,
            query,
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash,
        ]
    )


def as_sent(text: str) -> bytes:
    """The bytes a client signed: header values are decoded as latin-1, one character per
    byte received, so encoding them back gives the bytes as sent (UTF-8 metadata included).
    Text that cannot have come off the wire that way is taken as UTF-8."""
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def string_to_sign(amz_date: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(as_sent(canonical)).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


@lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str = SERVICE) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, TERMINAL):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()


# --- what a request claims ---------------------------------------------------------------


@dataclass(frozen=True)
class SignedRequest:
    """The signature fields of a request, parsed and checked for form (not yet verified)."""

    access_key: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    amz_date: str  # the request time, YYYYMMDDTHHMMSSZ
    signed_headers: tuple[str, ...]
    signature: str
    payload_hash: str  # what the canonical request ends with
    presigned: bool
    expires: int | None = None

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{SERVICE}/{TERMINAL}"

    @property
    def streaming(self) -> bool:
        return self.payload_hash in STREAMING_MODES


def header_value(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def parse_request(
    method: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    *,
    region: str,
    now: datetime,
) -> SignedRequest | None:
    """The request's SigV4 fields, or None when it has none (anonymous, or SigV2).

    Raises S3Error for a malformed or unsupported signature, a request time too far from
    ``now``, or an expired presigned URL.
    """
    authorization = header_value(headers, "authorization")
    names = {decode_component(name) for name, _ in split_query(raw_query)}
    if authorization is not None:
        if "X-Amz-Algorithm" in names or "Signature" in names:
            raise errors.invalid_argument(
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be "
                "specified",
                "Authorization",
                authorization,
            )
        if authorization.strip().startswith("AWS "):
            return None  # Signature Version 2
        return _parse_header_auth(authorization, headers, region=region, now=now)
    if "X-Amz-Algorithm" in names or "X-Amz-Credential" in names:
        return _parse_presigned(raw_query, headers, region=region, now=now)
    return None


def unsupported_mechanism() -> S3Error:
    return errors.invalid_request(
        f"The authorization mechanism you have provided is not supported. Please use {ALGORITHM}."
    )


def _parse_header_auth(
    authorization: str, headers: Sequence[tuple[str, str]], *, region: str, now: datetime
) -> SignedRequest:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise unsupported_mechanism()
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name in fields:
            raise errors.authorization_header_malformed(
                f"the authorization component {part.strip()!r} is malformed."
            )
        fields[name] = value.strip()
    for required in ("Credential", "SignedHeaders", "Signature"):
        if required not in fields:
            raise errors.authorization_header_malformed(
                f"the authorization header requires the {required} parameter."
            )
    access_key, date, cred_region = parse_credential(
        fields["Credential"], region, errors.authorization_header_malformed, ""
    )
    amz_date = _request_date(headers)
    if amz_date[:8] != date:
        raise errors.authorization_header_malformed(
            "Invalid credential date. Date is not the same as X-Amz-Date."
        )
    _check_skew(amz_date, now)
    payload_hash = header_value(headers, "x-amz-content-sha256")
    if payload_hash is None:
        raise errors.invalid_request(
            "Missing required header for this request: x-amz-content-sha256"
        )
    _check_payload_hash(payload_hash)
    signed = _parse_signed_headers(fields["SignedHeaders"], errors.authorization_header_malformed)
    _check_signature_form(fields["Signature"], errors.authorization_header_malformed)
    _check_unsigned_amz_headers(headers, signed)
    return SignedRequest(
        access_key=access_key,
        date=date,
        region=cred_region,
        amz_date=amz_date,
        signed_headers=signed,
        signature=fields["Signature"],
        payload_hash=payload_hash,
        presigned=False,
    )


def _parse_presigned(
    raw_query: str, headers: Sequence[tuple[str, str]], *, region: str, now: datetime
) -> SignedRequest:
    params: dict[str, str] = {}
    for name, value in split_query(raw_query):
        params.setdefault(decode_component(name), decode_component(value))
    if any(name not in params for name in _PRESIGN_PARAMS):
        raise errors.authorization_query_error(
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and "
            "X-Amz-Expires parameters."
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise errors.authorization_query_error(f'X-Amz-Algorithm only supports "{ALGORITHM}"')
    access_key, date, cred_region = parse_credential(
        params["X-Amz-Credential"],
        region,
        errors.authorization_query_error,
        "Error parsing the X-Amz-Credential parameter; ",
    )
    amz_date = params["X-Amz-Date"]
    try:
        signed_at = datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise errors.authorization_query_error(
            "X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\""
        ) from None
    if amz_date[:8] != date:
        raise errors.authorization_query_error(
            "Invalid credential date. Date is not the same as X-Amz-Date."
        )
    raw_expires = params["X-Amz-Expires"]
    if not raw_expires.lstrip("-").isdigit() or len(raw_expires) > 20:
        raise errors.authorization_query_error("X-Amz-Expires should be a number")
    expires = int(raw_expires)
    if expires < 0:
        raise errors.authorization_query_error("X-Amz-Expires must be non-negative")
    if expires > MAX_EXPIRES:
        raise errors.authorization_query_error(
            f"X-Amz-Expires must be less than a week (in seconds) that is {MAX_EXPIRES}"
        )
    signed = _parse_signed_headers(params["X-Amz-SignedHeaders"], errors.authorization_query_error)
    _check_signature_form(params["X-Amz-Signature"], errors.authorization_query_error)
    if signed_at - now > MAX_SKEW:
        raise errors.access_denied("Request is not valid yet")
    expiry = signed_at + timedelta(seconds=expires)
    if now >= expiry:
        raise errors.access_denied(
            "Request has expired",
            **{
                "X-Amz-Expires": str(expires),
                "Expires": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "ServerTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )
    _check_unsigned_amz_headers(headers, signed)
    payload_hash = header_value(headers, "x-amz-content-sha256") or UNSIGNED_PAYLOAD
    _check_payload_hash(payload_hash)
    return SignedRequest(
        access_key=access_key,
        date=date,
        region=cred_region,
        amz_date=amz_date,
        signed_headers=signed,
        signature=params["X-Amz-Signature"],
        payload_hash=payload_hash,
        presigned=True,
        expires=expires,
    )


def parse_credential(
    credential: str, region: str, make: MalformedError, lead: str
) -> tuple[str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or not parts[0]:
        raise make(
            f"{lead}the Credential is mal-formed; expecting "
            '"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request".'
        )
    access_key, date, cred_region, service, terminal = parts
    if len(date) != 8 or not date.isdigit():
        raise make(
            f'{lead}incorrect date format "{date}". This date in the credential must be in '
            'the format "yyyyMMdd".'
        )
    if cred_region != region:
        raise make(
            f"{lead}the region '{cred_region}' is wrong; expecting '{region}'", Region=region
        )
    if service != SERVICE:
        raise make(f'{lead}incorrect service "{service}". This endpoint belongs to "{SERVICE}".')
    if terminal != TERMINAL:
        raise make(f'{lead}incorrect terminal "{terminal}". This endpoint uses "{TERMINAL}".')
    return access_key, date, cred_region


def _request_date(headers: Sequence[tuple[str, str]]) -> str:
    amz_date = header_value(headers, "x-amz-date")
    if amz_date is not None:
        try:
            datetime.strptime(amz_date, AMZ_DATE_FORMAT)
        except ValueError:
            raise errors.access_denied(
                "AWS authentication requires a valid Date or x-amz-date header"
            ) from None
        return amz_date
    date = header_value(headers, "date")
    if date is not None:
        try:
            parsed = parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            parsed = None
        if parsed is not None:
            # "-0000" (a zone left unsaid) parses without a zone: HTTP dates are in UTC.
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.astimezone(UTC).strftime(AMZ_DATE_FORMAT)
    raise errors.access_denied("AWS authentication requires a valid Date or x-amz-date header")


def _check_skew(amz_date: str, now: datetime) -> None:
    when = datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    if abs(when - now) > MAX_SKEW:
        raise errors.request_time_too_skewed(amz_date, now.strftime(AMZ_DATE_FORMAT))


def _check_payload_hash(value: str) -> None:
    if value in (UNSIGNED_PAYLOAD, *STREAMING_MODES):
        return
    if len(value) == 64 and set(value) <= _HEX:
        return
    raise errors.invalid_argument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, "
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD, "
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER or a valid sha256 value.",
        "x-amz-content-sha256",
        value,
    )


def _parse_signed_headers(raw: str, error: MalformedError) -> tuple[str, ...]:
    names = tuple(raw.split(";"))
    if not raw or any(not name or name != name.strip().lower() for name in names):
        raise error(f"SignedHeaders {raw!r} is not a ;-separated list of lower-case names.")
    if "host" not in names:
        raise error("SignedHeaders must include host.")
    return names


def _check_signature_form(signature: str, error: MalformedError) -> None:
    if len(signature) != 64 or not set(signature) <= _HEX:
        raise error("the Signature must be 64 lower-case hexadecimal digits.")


def _check_unsigned_amz_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> None:
    # An x-amz-* header changes what a request does (metadata, copy source, ACL); one that
    # is not signed could have been added by anyone on the way.
    unsigned = sorted(
        {name for name, _ in headers if name.startswith("x-amz-") and name not in signed}
    )
    if unsigned:
        raise errors.access_denied(
            "There were headers present in the request which were not signed",
            HeadersNotSigned=", ".join(unsigned),
        )


# --- verification ------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """A request whose signature checked out, and what its aws-chunked body needs."""

    access_key: str
    key: bytes  # the signing key of its scope
    scope: str
    amz_date: str
    seed_signature: str


def verify(
    signed: SignedRequest,
    secret: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
) -> Verified:
    """Check the signature with ``secret``; raises SignatureDoesNotMatch if no form matches."""
    key = signing_key(secret, signed.date, signed.region)
    pairs = split_query(raw_query)
    if signed.presigned:
        pairs = [(n, v) for n, v in pairs if decode_component(n) != "X-Amz-Signature"]
    decoded_path = decode_component(raw_path)
    uris = [uri_encode(decoded_path, keep_slash=True)]
    if raw_path not in uris:
        uris.append(raw_path)
    queries = [canonical_query(pairs)]
    if "+" in raw_query:
        queries.append(canonical_query(pairs, plus_is_space=True))
    first: tuple[str, str] | None = None
    for uri in uris:
        for query in queries:
            canonical = canonical_request(
                method, uri, query, headers, signed.signed_headers, signed.payload_hash
            )
            text = string_to_sign(signed.amz_date, signed.scope, canonical)
            if hmac.compare_digest(sign(key, text), signed.signature):
                return Verified(
                    signed.access_key, key, signed.scope, signed.amz_date, signed.signature
                )
            if first is None:
                first = (text, canonical)
    assert first is not None
    raise errors.signature_does_not_match(first[0], signed.signature, signed.access_key, first[1])
