"""The policy of a browser upload (POST Object): its document, conditions and signature.

A POST form carries a base64 JSON ``policy`` (an ``expiration`` and a list of
``conditions``) and a signature of that base64 text: SigV4 (``x-amz-algorithm``,
``x-amz-credential``, ``x-amz-date``, ``x-amz-signature``: HMAC-SHA256 with the day's
signing key) or SigV2 (``AWSAccessKeyId``, ``signature``: HMAC-SHA1 with the secret).
Every condition must hold for the form's fields, and every field must be named by a
condition, except the ones S3 exempts (the signature and policy themselves, ``file``,
``x-ignore-*``) and the integrity checks ``x-amz-checksum-*``. Field names compare
without case; values compare exactly.

No I/O here: the caller looks up the secret and streams the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from store.gateways.s3 import errors, sigv4
from store.gateways.s3.errors import S3Error

EXEMPT = frozenset({"policy", "signature", "x-amz-signature", "awsaccesskeyid", "file"})
MAX_POLICY_BYTES = 20 * 1024


def invalid_policy(detail: str) -> S3Error:
    return S3Error("InvalidPolicyDocument", 400, f"Invalid Policy: {detail}")


def refused(detail: str) -> S3Error:
    return errors.access_denied(f"Invalid according to Policy: {detail}")


@dataclass
class Policy:
    expiration: datetime
    exact: list[tuple[str, str]] = field(default_factory=list)  # (field, value)
    prefixes: list[tuple[str, str]] = field(default_factory=list)  # (field, prefix)
    length_range: tuple[int, int] | None = None

    def check(self, fields: dict[str, str], now: datetime) -> None:
        """Raise unless the policy is in force and ``fields`` (names lower-cased, with
        ``bucket`` added) meet every condition and are all named by one."""
        if now >= self.expiration:
            raise refused("Policy expired.")
        for name, value in self.exact:
            if fields.get(name) != value:
                raise refused(f'Policy Condition failed: ["eq", "${name}", "{value}"]')
        for name, prefix in self.prefixes:
            got = fields.get(name)
            if got is None or not got.startswith(prefix):
                raise refused(f'Policy Condition failed: ["starts-with", "${name}", "{prefix}"]')
        named = {name for name, _ in self.exact} | {name for name, _ in self.prefixes}
        extra = [
            name
            for name in fields
            if name not in EXEMPT
            and not name.startswith(("x-ignore-", "x-amz-checksum-"))
            and name not in named
        ]
        if extra:
            raise refused(f"Extra input fields: {', '.join(sorted(extra))}")


def _name(raw: object) -> str:
    if not isinstance(raw, str) or not raw.startswith("$") or len(raw) < 2:
        raise invalid_policy(f"Invalid condition field: {raw!r}")
    return raw[1:].lower()


def _text(raw: object) -> str:
    if not isinstance(raw, str):
        raise invalid_policy(f"Invalid condition value: {raw!r}")
    return raw


def _length(raw: object) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise invalid_policy("Invalid content-length-range")
    try:
        value = int(raw)
    except ValueError:
        raise invalid_policy("Invalid content-length-range") from None
    if value < 0:
        raise invalid_policy("Invalid content-length-range")
    return value


def _expiration(raw: object) -> datetime:
    if not isinstance(raw, str):
        raise invalid_policy("Policy missing expiration.")
    text = raw.strip()
    try:
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise invalid_policy(f"Invalid 'expiration' value: '{raw}'") from None
    if when.tzinfo is None or "T" not in text:
        raise invalid_policy(f"Invalid 'expiration' value: '{raw}'")
    return when.astimezone(UTC)


def parse_policy(encoded: str) -> Policy:
    """The policy of a form's ``policy`` field (base64 of a JSON document)."""
    if len(encoded) > MAX_POLICY_BYTES:
        raise invalid_policy("Policy is too large.")
    try:
        document = json.loads(base64.b64decode(encoded.encode("ascii"), validate=True))
    except (ValueError, binascii.Error, UnicodeError):
        raise invalid_policy("Policy is not valid base64-encoded JSON.") from None
    if not isinstance(document, dict):
        raise invalid_policy("Policy is not a JSON object.")
    if "expiration" not in document:
        raise invalid_policy("Policy missing expiration.")
    policy = Policy(_expiration(document["expiration"]))
    conditions = document.get("conditions")
    if not isinstance(conditions, list):
        raise invalid_policy("Policy missing conditions.")
    for condition in conditions:
        _add(policy, condition)
    return policy


def _add(policy: Policy, condition: Any) -> None:
    if isinstance(condition, dict):
        if len(condition) != 1:
            raise invalid_policy(f"Invalid simple condition: {json.dumps(condition)}")
        ((name, value),) = condition.items()
        policy.exact.append((str(name).lower(), _text(value)))
        return
    if not isinstance(condition, list) or len(condition) != 3:
        raise invalid_policy(f"Invalid condition: {json.dumps(condition)}")
    kind = str(condition[0]).lower()
    if kind == "eq":
        policy.exact.append((_name(condition[1]), _text(condition[2])))
    elif kind == "starts-with":
        policy.prefixes.append((_name(condition[1]), _text(condition[2])))
    elif kind == "content-length-range":
        low, high = _length(condition[1]), _length(condition[2])
        if low > high:
            raise invalid_policy("Invalid content-length-range")
        policy.length_range = (low, high)
    else:
        raise invalid_policy(f"Unknown condition: {json.dumps(condition)}")


@dataclass(frozen=True)
class FormSignature:
    access_key: str
    signature: str
    v4_scope: tuple[str, str] | None = None  # the credential's day and region (SigV4 only)


def signature_of(fields: dict[str, str], region: str) -> FormSignature:
    """Who signed the form and how (field names lower-cased); a SigV4 credential must be
    scoped to this gateway's ``region`` and to S3."""
    if "x-amz-signature" in fields or "x-amz-credential" in fields:
        algorithm = fields.get("x-amz-algorithm", "")
        if algorithm != sigv4.ALGORITHM:
            raise errors.invalid_argument(
                "Only AWS4-HMAC-SHA256 is supported", "X-Amz-Algorithm", algorithm
            )
        credential = fields.get("x-amz-credential", "")
        signature = fields.get("x-amz-signature")
        if signature is None:
            raise errors.invalid_argument(
                "Bucket POST must contain a field named 'x-amz-signature'.",
                "x-amz-signature",
                "",
            )

        def malformed(message: str, **_: str) -> S3Error:
            return errors.invalid_argument(message, "X-Amz-Credential", credential)

        access_key, day, _ = sigv4.parse_credential(
            credential, region, malformed, "Error parsing the X-Amz-Credential parameter; "
        )
        return FormSignature(access_key, signature, (day, region))
    v2_key = fields.get("awsaccesskeyid")
    v2_signature = fields.get("signature")
    if v2_key is None or v2_signature is None:
        raise errors.invalid_argument(
            "Bucket POST must contain a field named 'AWSAccessKeyId'.  If it is specified, "
            "please check the order of the fields.",
            "AWSAccessKeyId",
            "",
        )
    return FormSignature(v2_key, v2_signature)


def verify(signed: FormSignature, secret: str, policy: str) -> None:
    """Raise SignatureDoesNotMatch unless ``signed`` signs the base64 ``policy``."""
    if signed.v4_scope is not None:
        key = sigv4.signing_key(secret, *signed.v4_scope)
        expected = sigv4.sign(key, policy)
    else:
        digest = hmac.new(secret.encode(), policy.encode("ascii", "replace"), hashlib.sha1)
        expected = base64.b64encode(digest.digest()).decode()
    if not hmac.compare_digest(expected.encode(), signed.signature.encode("utf-8", "replace")):
        raise errors.signature_does_not_match(policy, signed.signature, signed.access_key, "")
