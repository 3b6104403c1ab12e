"""XML in and out: S3 response documents, and a guarded parser for request bodies.

Responses are built as text by :class:`Doc` (S3's documents are small and flat; a tree
library would add nothing but cost). Request bodies come from the network: DTDs and entity
declarations are refused before expat sees them, sizes are bounded by the callers, and
namespaces are ignored so that a body with or without ``xmlns`` reads the same.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime

from store.gateways.s3 import errors

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'

_ESCAPES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&apos;",
    "\r": "&#13;",
    "\n": "&#10;",
    "\t": "&#9;",
}


def escape(text: str) -> str:
    if not any(c in _ESCAPES or c < " " for c in text):
        return text
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c < " ":
            out.append(f"&#x{ord(c):x};")
        else:
            out.append(c)
    return "".join(out)


def iso_time(timestamp: float) -> str:
    """S3's timestamp form in listings: 2009-10-12T17:50:30.000Z."""
    when = datetime.fromtimestamp(timestamp, UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class Doc:
    """An XML document written in order: ``open``/``close`` elements, ``leaf`` for text."""

    def __init__(self, root: str, *, namespace: bool = True) -> None:
        self._parts = [DECLARATION, f'<{root} xmlns="{NAMESPACE}">' if namespace else f"<{root}>"]
        self._stack = [root]

    def open(self, name: str, attrs: str = "") -> Doc:
        self._parts.append(f"<{name}{' ' + attrs if attrs else ''}>")
        self._stack.append(name)
        return self

    def close(self) -> Doc:
        self._parts.append(f"</{self._stack.pop()}>")
        return self

    def leaf(self, name: str, value: str | int | bool | None) -> Doc:
        if value is None:
            return self
        text = ("true" if value else "false") if isinstance(value, bool) else escape(str(value))
        self._parts.append(f"<{name}>{text}</{name}>")
        return self

    def owner(self, name: str, user_id: str, display_name: str) -> Doc:
        return self.open(name).leaf("ID", user_id).leaf("DisplayName", display_name).close()

    def to_bytes(self) -> bytes:
        while self._stack:
            self.close()
        return "".join(self._parts).encode("utf-8")


def error_document(error: errors.S3Error, resource: str, request_id: str, host_id: str) -> bytes:
    doc = Doc("Error", namespace=False)
    doc.leaf("Code", error.code).leaf("Message", error.message)
    for name, value in error.fields.items():
        doc.leaf(name, value)
    doc.leaf("Resource", resource).leaf("RequestId", request_id).leaf("HostId", host_id)
    return doc.to_bytes()


# --- parsing -------------------------------------------------------------------------------


def parse(body: bytes, root: str) -> ET.Element:
    """The root element of an XML request body, which must be named ``root``."""
    head = body[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in body.lower():
        raise errors.malformed_xml()
    try:
        element = ET.fromstring(body)
    except (ET.ParseError, ValueError):
        raise errors.malformed_xml() from None
    if local_name(element.tag) != root:
        raise errors.malformed_xml()
    return element


def local_name(tag: str) -> str:
    return tag.rpartition("}")[2]


def children(element: ET.Element, name: str) -> Iterator[ET.Element]:
    for child in element:
        if local_name(child.tag) == name:
            yield child


def child_text(element: ET.Element, name: str) -> str | None:
    for child in children(element, name):
        return child.text or ""
    return None
