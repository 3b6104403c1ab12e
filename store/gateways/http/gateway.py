"""The HTTP gateway's request handler: pool objects over GET, HEAD, PUT and DELETE.

Routing, access checks, conditional requests and ranges are decided here from pure
helpers (``names``, ``access``, ``conditions``, ``listing``); the cluster work is in
``storage.py``. Every failure becomes a status with a one-line plain-text reason.
"""

from __future__ import annotations

import logging
import mimetypes
import re

from store.errors import ClientTimeout, Code, RemoteError
from store.gateways.http.access import AccessPolicy
from store.gateways.http.conditions import (
    Unsatisfiable,
    etag_of,
    evaluate_preconditions,
    http_date,
    parse_range,
    range_applies,
)
from store.gateways.http.layout import CorruptLayout
from store.gateways.http.listing import group, parse_listing_query, render_html, render_json
from store.gateways.http.names import BadTarget, Target, is_reserved, parse_target, quote_name
from store.gateways.http.storage import (
    HttpObjects,
    ObjectInfo,
    Precondition,
    PreconditionFailed,
    TooBusy,
)
from store.gateways.web.server import Request, Response, text_response
from store.placement import UnknownPool

log = logging.getLogger("store.http")

DEFAULT_MAX_OBJECT_SIZE = 5 * 1024**3
DEFAULT_TYPE = "application/octet-stream"
_CONTENT_TYPE = re.compile(r"^[\x20-\x7e]{1,255}$")
READ_METHODS = ("GET", "HEAD")
OBJECT_METHODS = "GET, HEAD, PUT, DELETE"

_REMOTE_STATUS = {
    Code.ENOENT: 404,
    Code.EPERM: 403,
    Code.EFBIG: 413,
    Code.ENOSPC: 507,
    Code.EAGAIN: 503,
    Code.EDEGRADED: 503,
    Code.ETIMEDOUT: 503,
    Code.EAUTH: 502,
    Code.EIO: 502,
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


class HttpGateway:
    def __init__(
        self,
        objects: HttpObjects,
        policy: AccessPolicy,
        *,
        max_object_size: int = DEFAULT_MAX_OBJECT_SIZE,
    ) -> None:
        self.objects = objects
        self.policy = policy
        self.max_object_size = max_object_size

    async def handle(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except HttpError as exc:
            return text_response(exc.status, f"{exc.message}\n", exc.headers)
        except PreconditionFailed as exc:
            return text_response(exc.status, "precondition failed\n")
        except TooBusy as exc:
            return text_response(503, f"{exc}; try again\n", [("Retry-After", "1")])
        except UnknownPool as exc:
            return text_response(404, f"{exc}\n")
        except RemoteError as exc:
            status = _REMOTE_STATUS.get(exc.code, 502)
            return text_response(status, f"the cluster answered {exc}\n")
        except ClientTimeout as exc:
            return text_response(504, f"the cluster did not answer in time: {exc}\n")
        except CorruptLayout as exc:
            log.error("%s %s: %s", request.method, request.target, exc)
            return text_response(502, f"the object's stored layout is unreadable: {exc}\n")

    async def _route(self, request: Request) -> Response:
        try:
            target = parse_target(request.path)
        except BadTarget as exc:
            raise HttpError(400, str(exc)) from None
        method = request.method
        if target.kind == "health":
            if method not in READ_METHODS:
                raise _not_allowed("GET, HEAD")
            return text_response(200, "ok\n")
        if target.kind == "root":
            raise HttpError(404, "name a pool: /<pool>/ lists it, /<pool>/<object> is an object")
        if target.kind == "pool":
            location = f"/{quote_name(target.pool)}/"
            if request.query:
                location += "?" + request.query
            return Response(301, [("Location", location)], b"")
        if target.kind == "listing":
            if method not in READ_METHODS:
                if method in ("PUT", "DELETE"):
                    raise HttpError(400, "object names cannot be empty or end with '/'")
                raise _not_allowed("GET, HEAD")
            self._authorize(request, target, write=False)
            return await self._listing(request, target)
        if method in READ_METHODS:
            self._authorize(request, target, write=False)
            self._refuse_reserved(target)
            return await self._get(request, target)
        if method == "PUT":
            self._authorize(request, target, write=True)
            self._refuse_reserved(target)
            return await self._put(request, target)
        if method == "DELETE":
            self._authorize(request, target, write=True)
            self._refuse_reserved(target)
            return await self._delete(request, target)
        raise _not_allowed(OBJECT_METHODS)

    def _authorize(self, request: Request, target: Target, *, write: bool) -> None:
        denial = self.policy.check(target.pool, write, request.header("authorization"))
        if denial is not None:
            raise HttpError(denial.status, denial.message, list(denial.headers))
        self.objects.client.pool(target.pool)  # UnknownPool: 404

    @staticmethod
    def _refuse_reserved(target: Target) -> None:
        if is_reserved(target.name):
            raise HttpError(403, "names under .http/ hold the gateway's own data")

    # --- reads ----------------------------------------------------------------------------

    async def _get(self, request: Request, target: Target) -> Response:
        info = await self.objects.head(target.pool, target.name, with_data=request.method == "GET")
        headers = _conditional_headers(request)
        if info is None:
            if "if-match" in headers:
                raise PreconditionFailed(412)
            raise HttpError(404, f"no object {target.name!r} in pool {target.pool!r}")
        validators = [("ETag", info.etag), ("Last-Modified", http_date(info.mtime))]
        status = evaluate_preconditions(request.method, headers, info.etag, info.mtime)
        if status == 304:
            return Response(304, validators)
        if status is not None:
            raise PreconditionFailed(status)
        stored = info.content_type
        content_type = stored if stored and _CONTENT_TYPE.match(stored) else _guess_type(info.name)
        common = [
            *validators,
            ("Content-Type", content_type),
            ("Accept-Ranges", "bytes"),
        ]
        try:
            wanted = parse_range(request.header("range"), info.size)
        except Unsatisfiable:
            return Response(
                416,
                [("Content-Range", f"bytes */{info.size}"), ("Content-Type", "text/plain")],
                f"range not satisfiable: the object has {info.size} bytes\n".encode(),
            )
        if wanted is not None and not range_applies(headers, info.etag, info.mtime):
            wanted = None
        if wanted is None:
            status, start, end = 200, 0, info.size - 1
        else:
            status, start, end = 206, wanted.start, wanted.end
            common.append(("Content-Range", wanted.content_range(info.size)))
        length = end - start + 1
        common.append(("Content-Length", str(length)))
        if request.method == "HEAD":
            return Response(status, common, b"")
        return Response(status, common, self.objects.body(target.pool, info, start, end))

    async def _listing(self, request: Request, target: Target) -> Response:
        try:
            query = parse_listing_query(request.query, target.name, request.header("accept"))
        except BadTarget as exc:
            raise HttpError(400, str(exc)) from None
        entries = await self.objects.list_objects(target.pool, query.prefix)
        page = group(entries, query)
        unknown = [name for name, size in page.objects if size == 0]
        if unknown:  # striped objects have empty heads: ask their manifests
            sizes = await self.objects.sizes(target.pool, unknown)
            page.objects[:] = [(name, sizes.get(name, size)) for name, size in page.objects]
        if query.format == "json":
            body, kind = render_json(target.pool, page), "application/json"
        else:
            body, kind = render_html(target.pool, page), "text/html; charset=utf-8"
        if request.method == "HEAD":
            return Response(200, [("Content-Type", kind), ("Content-Length", str(len(body)))])
        return Response(200, [("Content-Type", kind), ("Cache-Control", "no-cache")], body)

    # --- writes ---------------------------------------------------------------------------

    async def _put(self, request: Request, target: Target) -> Response:
        if request.header("content-range") is not None:
            raise HttpError(
                400, "partial PUT (Content-Range) is not supported: send the whole object"
            )
        if request.body.length is not None and request.body.length > self.max_object_size:
            raise HttpError(413, f"objects are at most {self.max_object_size} bytes here")
        content_type = request.header("content-type") or _guess_type(target.name)
        if not _CONTENT_TYPE.match(content_type):
            raise HttpError(400, "Content-Type must be 1 to 255 printable ASCII characters")
        headers = _conditional_headers(request)
        precondition = _write_precondition("PUT", headers)
        if precondition is not None:
            # Answer before the body is sent, then check again as the object is published.
            current = await self.objects.head(target.pool, target.name)
            status = precondition(current)
            if status is not None:
                raise PreconditionFailed(status)
        created, version = await self.objects.put(
            target.pool,
            target.name,
            request.body,
            content_type=content_type,
            max_size=self.max_object_size,
            precondition=precondition,
        )
        tag = [("ETag", etag_of(version))]
        if created:
            location = f"/{quote_name(target.pool)}/{quote_name(target.name)}"
            return text_response(201, "created\n", [*tag, ("Location", location)])
        return Response(204, tag)

    async def _delete(self, request: Request, target: Target) -> Response:
        precondition = _write_precondition("DELETE", _conditional_headers(request))
        if not await self.objects.delete(target.pool, target.name, precondition):
            raise HttpError(404, f"no object {target.name!r} in pool {target.pool!r}")
        return Response(204)


def _not_allowed(allowed: str) -> HttpError:
    return HttpError(405, f"method not allowed here; use {allowed}", [("Allow", allowed)])


def _conditional_headers(request: Request) -> dict[str, str]:
    names = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if-range")
    return {name: value for name in names if (value := request.header(name)) is not None}


def _write_precondition(method: str, headers: dict[str, str]) -> Precondition | None:
    if not any(k in headers for k in ("if-match", "if-none-match", "if-unmodified-since")):
        return None

    def check(current: ObjectInfo | None) -> int | None:
        if current is None:
            return evaluate_preconditions(method, headers, None, None)
        return evaluate_preconditions(method, headers, current.etag, current.mtime)

    return check


def _guess_type(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name, strict=False)
    return guessed or DEFAULT_TYPE
