"""XML documents out, guarded XML parsing in."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from store.gateways.s3 import errors, xmldoc
from store.gateways.s3.errors import S3Error

NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def test_error_document_has_code_message_resource_and_request_id() -> None:
    body = xmldoc.error_document(errors.no_such_key("a&b<c>"), "/bucket/a&b<c>", "REQ123", "HOST")
    root = ET.fromstring(body)
    assert root.tag == "Error"
    assert root.findtext("Code") == "NoSuchKey"
    assert root.findtext("Message") == "The specified key does not exist."
    assert root.findtext("Key") == "a&b<c>"
    assert root.findtext("Resource") == "/bucket/a&b<c>"
    assert root.findtext("RequestId") == "REQ123"
    assert root.findtext("HostId") == "HOST"
    assert body.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')


def test_documents_escape_text_and_carry_the_namespace() -> None:
    doc = xmldoc.Doc("ListBucketResult")
    doc.leaf("Name", "b").leaf("IsTruncated", False).leaf("MaxKeys", 5).leaf("Skipped", None)
    doc.open("Contents").leaf("Key", "tab\there 'quote\" &amp; \r\n").close()
    root = ET.fromstring(doc.to_bytes())
    assert root.tag == f"{NS}ListBucketResult"
    assert root.findtext(f"{NS}IsTruncated") == "false"
    assert root.findtext(f"{NS}MaxKeys") == "5"
    assert root.find(f"{NS}Skipped") is None
    assert root.findtext(f"{NS}Contents/{NS}Key") == "tab\there 'quote\" &amp; \r\n"


def test_iso_time_has_milliseconds() -> None:
    assert xmldoc.iso_time(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


def test_parse_ignores_namespaces() -> None:
    for body in (
        b"<Delete><Object><Key>k</Key></Object></Delete>",
        f'<Delete xmlns="{NS[1:-1]}"><Object><Key>k</Key></Object></Delete>'.encode(),
    ):
        root = xmldoc.parse(body, "Delete")
        objects = list(xmldoc.children(root, "Object"))
        assert [xmldoc.child_text(o, "Key") for o in objects] == ["k"]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<Delete>",
        b"<Other/>",
        b"not xml at all",
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><Delete>&a;</Delete>',
        b'<!DOCTYPE d SYSTEM "file:///etc/passwd"><Delete/>',
        b"<Delete>\xff</Delete>",
    ],
)
def test_bad_bodies_are_malformed_xml(body: bytes) -> None:
    with pytest.raises(S3Error) as caught:
        xmldoc.parse(body, "Delete")
    assert (caught.value.code, caught.value.status) == ("MalformedXML", 400)
