"""Cross-origin resource sharing: a bucket's CORS rules, preflights, and response headers.

A bucket's CORS configuration is a list of rules, each allowing some origins (a ``*`` in
an origin matches any text), some methods and some request headers (``*`` wildcards too),
and naming the response headers a browser may show to scripts and how long it may cache a
preflight. The first rule that allows the origin, the method and every requested header
applies. A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is
answered from the rules alone, without credentials; any other request that carries an
``Origin`` gets the matching rule's headers on its answer, whatever that answer is.

No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from store.gateways.s3 import errors, xmldoc
from store.gateways.s3.errors import S3Error

METHODS = ("GET", "PUT", "POST", "DELETE", "HEAD")
MAX_RULES = 100


@dataclass(frozen=True)
class CorsRule:
    methods: tuple[str, ...]
    origins: tuple[str, ...]
    headers: tuple[str, ...] = ()  # allowed request headers, lower-cased
    expose: tuple[str, ...] = ()
    max_age: int | None = None
    id: str | None = None

    def to_wire(self) -> list[Any]:
        return [
            list(self.methods),
            list(self.origins),
            list(self.headers),
            list(self.expose),
            self.max_age,
            self.id,
        ]

    @classmethod
    def from_wire(cls, raw: Sequence[Any]) -> CorsRule:
        methods, origins, headers, expose, max_age, rule_id = raw
        return cls(
            tuple(str(m) for m in methods),
            tuple(str(o) for o in origins),
            tuple(str(h) for h in headers),
            tuple(str(e) for e in expose),
            None if max_age is None else int(max_age),
            None if rule_id is None else str(rule_id),
        )

    def allows(self, origin: str, method: str, headers: Sequence[str]) -> bool:
        return (
            method in self.methods
            and any(wildcard_match(pattern, origin) for pattern in self.origins)
            and all(any(wildcard_match(p, h) for p in self.headers) for h in headers)
        )


def wildcard_match(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern``, where each ``*`` stands for any text."""
    regex = ".*".join(re.escape(piece) for piece in pattern.split("*"))
    return re.fullmatch(regex, text, re.DOTALL) is not None


def _invalid(message: str) -> S3Error:
    return errors.invalid_request(message)


def _texts(element: Any, name: str) -> tuple[str, ...]:
    return tuple((child.text or "").strip() for child in xmldoc.children(element, name))


def parse_configuration(body: bytes) -> tuple[CorsRule, ...]:
    """The rules of a <CORSConfiguration> document, validated as S3 does."""
    root = xmldoc.parse(body, "CORSConfiguration")
    rules: list[CorsRule] = []
    for element in xmldoc.children(root, "CORSRule"):
        methods = _texts(element, "AllowedMethod")
        origins = _texts(element, "AllowedOrigin")
        if not methods or not origins:
            raise errors.malformed_xml()
        for method in methods:
            if method not in METHODS:
                raise _invalid(
                    f"Found unsupported HTTP method in CORS config. Unsupported method is {method}"
                )
        for origin in origins:
            if origin.count("*") > 1:
                raise _invalid(f'AllowedOrigin "{origin}" can not have more than one wildcard.')
        headers = tuple(h.lower() for h in _texts(element, "AllowedHeader"))
        for header in headers:
            if header.count("*") > 1:
                raise _invalid(f'AllowedHeader "{header}" can not have more than one wildcard.')
        max_age_text = xmldoc.child_text(element, "MaxAgeSeconds")
        max_age = None
        if max_age_text is not None:
            if not max_age_text.strip().isdigit():
                raise errors.malformed_xml()
            max_age = int(max_age_text)
        rule_id = xmldoc.child_text(element, "ID")
        if rule_id is not None and len(rule_id) > 255:
            raise _invalid("The ID of a CORS rule is longer than 255 characters.")
        rules.append(
            CorsRule(methods, origins, headers, _texts(element, "ExposeHeader"), max_age, rule_id)
        )
    if not rules:
        raise errors.malformed_xml()
    if len(rules) > MAX_RULES:
        raise _invalid(f"A CORS configuration has at most {MAX_RULES} rules.")
    return tuple(rules)


def configuration_document(rules: Sequence[CorsRule]) -> bytes:
    doc = xmldoc.Doc("CORSConfiguration")
    for rule in rules:
        doc.open("CORSRule")
        if rule.id is not None:
            doc.leaf("ID", rule.id)
        for name, values in (
            ("AllowedHeader", rule.headers),
            ("AllowedMethod", rule.methods),
            ("AllowedOrigin", rule.origins),
            ("ExposeHeader", rule.expose),
        ):
            for value in values:
                doc.leaf(name, value)
        if rule.max_age is not None:
            doc.leaf("MaxAgeSeconds", rule.max_age)
        doc.close()
    return doc.to_bytes()


def requested_headers(value: str | None) -> list[str]:
    """The names an Access-Control-Request-Headers value lists, lower-cased."""
    if not value:
        return []
    return [name.strip().lower() for name in value.split(",") if name.strip()]


def matching(
    rules: Sequence[CorsRule], origin: str, method: str, headers: Sequence[str] = ()
) -> CorsRule | None:
    return next((rule for rule in rules if rule.allows(origin, method, headers)), None)


def allow_headers(rule: CorsRule, origin: str) -> list[tuple[str, str]]:
    """What an answer carries for a request (or preflight) ``rule`` allows."""
    # Allowed by a bare "*" only: any origin may read it, so it is not named.
    wildcard = not any(p != "*" and wildcard_match(p, origin) for p in rule.origins)
    headers = [
        ("Access-Control-Allow-Origin", "*" if wildcard else origin),
        ("Access-Control-Allow-Methods", ", ".join(rule.methods)),
        ("Vary", "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"),
    ]
    if not wildcard:
        headers.append(("Access-Control-Allow-Credentials", "true"))
    if rule.expose:
        headers.append(("Access-Control-Expose-Headers", ", ".join(rule.expose)))
    if rule.max_age is not None:
        headers.append(("Access-Control-Max-Age", str(rule.max_age)))
    return headers


def refused(message: str) -> S3Error:
    return S3Error("AccessForbidden", 403, f"CORSResponse: {message}")


def preflight(
    rules: Sequence[CorsRule] | None, origin: str | None, method: str | None, asked: str | None
) -> list[tuple[str, str]]:
    """The headers of a successful answer to a preflight, or the error to answer."""
    if not origin:
        raise errors.S3Error(
            "BadRequest", 400, "Insufficient information. Origin request header needed."
        )
    if not method:
        raise errors.S3Error(
            "BadRequest",
            400,
            "Invalid Access-Control-Request-Method: null",
        )
    if not rules:
        raise refused("CORS is not enabled for this bucket.")
    headers = requested_headers(asked)
    rule = matching(rules, origin, method, headers)
    if rule is None:
        raise refused(
            "This CORS request is not allowed. This is usually because the evaluation of "
            "Origin, request method / Access-Control-Request-Method or "
            "Access-Control-Request-Headers are not whitelisted by the resource's CORS spec."
        )
    answer = allow_headers(rule, origin)
    if headers:
        answer.append(("Access-Control-Allow-Headers", ", ".join(headers)))
    return answer
