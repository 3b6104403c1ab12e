"""Building responses: XML documents, errors, and the headers every S3 answer carries."""

from __future__ import annotations

from store.gateways.s3 import xmldoc
from store.gateways.s3.errors import S3Error
from store.gateways.web.server import Response

XML = "application/xml"


def xml(status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, [("Content-Type", XML), *(headers or [])], body)


def empty(status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, list(headers or []), b"")


def error(err: S3Error, resource: str, request_id: str, host_id: str) -> Response:
    body = xmldoc.error_document(err, resource, request_id, host_id)
    return Response(err.status, [("Content-Type", XML), *err.headers], body)


def stamp(response: Response, request_id: str, host_id: str) -> Response:
    """Add x-amz-request-id and x-amz-id-2 (the RequestId and HostId of error documents)."""
    response.headers.append(("x-amz-request-id", request_id))
    response.headers.append(("x-amz-id-2", host_id))
    return response
