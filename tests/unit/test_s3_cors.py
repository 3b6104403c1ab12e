"""CORS rules: wildcards, the configuration document both ways, and preflight answers."""

from __future__ import annotations

import pytest

from store.gateways.s3 import cors
from store.gateways.s3.errors import S3Error


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("*", "anything", True),
        ("*suffix", "foo.suffix", True),
        ("*suffix", "foo.suffix.get", False),
        ("start*end", "startend", True),
        ("start*end", "start12end", True),
        ("start*end", "0start12end", False),
        ("prefix*", "prefix.suffix", True),
        ("prefix*", "bla.prefix", False),
        ("a.b", "aXb", False),  # a dot is a dot
        ("exact", "exact", True),
    ],
)
def test_wildcards(pattern: str, text: str, matches: bool) -> None:
    assert cors.wildcard_match(pattern, text) is matches


DOCUMENT = b"""<CORSConfiguration><CORSRule><ID>r1</ID>
<AllowedOrigin>https://*.example.com</AllowedOrigin><AllowedMethod>PUT</AllowedMethod>
<AllowedMethod>GET</AllowedMethod><AllowedHeader>X-Amz-*</AllowedHeader>
<ExposeHeader>ETag</ExposeHeader><MaxAgeSeconds>30</MaxAgeSeconds></CORSRule>
<CORSRule><AllowedOrigin>*</AllowedOrigin><AllowedMethod>HEAD</AllowedMethod></CORSRule>
</CORSConfiguration>"""


def test_document_round_trip() -> None:
    rules = cors.parse_configuration(DOCUMENT)
    assert rules[0] == cors.CorsRule(
        ("PUT", "GET"), ("https://*.example.com",), ("x-amz-*",), ("ETag",), 30, "r1"
    )
    assert cors.parse_configuration(cors.configuration_document(rules)) == rules
    assert tuple(cors.CorsRule.from_wire(r.to_wire()) for r in rules) == rules


@pytest.mark.parametrize(
    "body",
    [
        b"<CORSConfiguration/>",
        b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin></CORSRule>"
        b"</CORSConfiguration>",
        b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin>"
        b"<AllowedMethod>COPY</AllowedMethod></CORSRule></CORSConfiguration>",
        b"<CORSConfiguration><CORSRule><AllowedOrigin>*</AllowedOrigin>"
        b"<AllowedMethod>GET</AllowedMethod><MaxAgeSeconds>-1</MaxAgeSeconds></CORSRule>"
        b"</CORSConfiguration>",
        b"<Other/>",
    ],
)
def test_bad_documents(body: bytes) -> None:
    with pytest.raises(S3Error) as caught:
        cors.parse_configuration(body)
    assert caught.value.status == 400


def test_preflight_answers() -> None:
    rules = cors.parse_configuration(DOCUMENT)
    origin = "https://a.example.com"
    headers = dict(cors.preflight(rules, origin, "PUT", "x-amz-date,X-Amz-Meta-A"))
    assert headers["Access-Control-Allow-Origin"] == origin
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Allow-Headers"] == "x-amz-date, x-amz-meta-a"
    assert (
        dict(cors.preflight(rules, "http://x", "HEAD", None))["Access-Control-Allow-Origin"] == "*"
    )
    for origin_sent, method, asked, status in [
        (None, "PUT", None, 400),
        (origin, None, None, 400),
        (origin, "DELETE", None, 403),
        (origin, "PUT", "content-type", 403),
        ("http://a.example.com", "PUT", None, 403),
    ]:
        with pytest.raises(S3Error) as caught:
            cors.preflight(rules, origin_sent, method, asked)
        assert caught.value.status == status
    with pytest.raises(S3Error) as caught:
        cors.preflight((), origin, "PUT", None)
    assert caught.value.status == 403
