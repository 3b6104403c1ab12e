"""The dashboard's HTTPS routes, served by the master on a port of its own.

Routes::

    GET  /login          the login form           POST /login    check name + key, set cookie
    POST /logout         end the session          GET  /         the page (logged in)
    GET  /api/status     the page's data (JSON)   GET  /static/… its CSS and JavaScript
    GET  /healthz        200 while the master serves

Login takes an admin client's name and key (the base64 ``key`` of its key file), checked
against the master's own records as the master checks keys — the key must be the client's,
in constant time, and the client must be an admin. A login is refused the same way
whatever was wrong; the log says which (never the key). The page is read-only: nothing
here changes the cluster. Every answer carries a strict Content-Security-Policy (no
inline script), and state-changing forms are refused from other origins.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import html
import json
import logging
import ssl
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from store.auth import is_valid_client_name
from store.errors import ConfigError
from store.gateways.web.server import BodyTooLarge, Request, Response, serve
from store.master.dashboard import view
from store.master.dashboard.sessions import (
    COOKIE,
    LoginSessions,
    LoginThrottle,
    cleared_cookie,
    parse_cookies,
    session_cookie,
)

if TYPE_CHECKING:
    from store.master.server import MasterServer

log = logging.getLogger("store.master.dashboard")

MAX_FORM = 4096
STATIC = {
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
    ("Strict-Transport-Security", "max-age=31536000"),
]
LOGIN_REFUSED = "Login refused: unknown name, wrong key, or not an admin key."


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """HTTPS for browsers with the master's certificate (no client certificates)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the dashboard certificate {cert}: {exc}") from None
    return context


def _static(name: str) -> bytes:
    return resources.files("store.master.dashboard").joinpath("static", name).read_bytes()


def check_login(server: MasterServer, name: str, key: str) -> str | None:
    """Why a login is refused, or None to accept it. The reason is for the log only."""
    if not is_valid_client_name(name):
        return "not a client name"
    record = server.state.client(name)
    try:
        secret = base64.b64decode(key.strip(), validate=True)
    except (binascii.Error, ValueError):
        secret = b""
    # Compared even for an unknown name, so that timing tells nothing.
    matches = hmac.compare_digest(secret, record.secret if record is not None else bytes(32))
    if record is None:
        return "unknown client"
    if not matches:
        return "wrong key"
    if not record.caps.admin:
        return "not an admin key"
    return None


class Dashboard:
    def __init__(self, server: MasterServer) -> None:
        self.server = server
        self.sessions = LoginSessions()
        self.throttle = LoginThrottle()
        self.files = {
            name: _static(name) for name in ("index.html", "login.html", "app.js", "style.css")
        }

    async def serve(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                functools.partial(serve, self.handle, host, port, ssl_context=context)
            )
            log.info("dashboard at https://%s:%d/", host, bound)
            task_status.started(bound)

    # --- routing ------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        response = await self._route(request)
        response.headers.extend(SECURITY_HEADERS)
        return response

    async def _route(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/healthz" and method in ("GET", "HEAD"):
            return _text(200, "ok\n")
        if path in STATIC and method in ("GET", "HEAD"):
            name, content_type = STATIC[path]
            return Response(
                200,
                [("Content-Type", content_type), ("Cache-Control", "no-cache")],
                self.files[name],
            )
        if path == "/login":
            if method in ("GET", "HEAD"):
                return self._login_page(200, "")
            if method == "POST":
                return await self._login(request)
            return _text(405, "GET or POST\n", [("Allow", "GET, HEAD, POST")])
        if path == "/logout":
            if method != "POST":
                return _text(405, "POST\n", [("Allow", "POST")])
            if not _same_origin(request):
                return _text(403, "cross-site request refused\n")
            self.sessions.end(self._token(request))
            return _redirect("/login", [("Set-Cookie", cleared_cookie())])
        if path in ("/", "/api/status"):
            if method not in ("GET", "HEAD"):
                return _text(405, "GET\n", [("Allow", "GET, HEAD")])
            user = self._user(request)
            if user is None:
                if path == "/":
                    return _redirect("/login")
                return _json(401, {"error": "log in first"})
            if path == "/":
                return Response(
                    200,
                    [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
                    self.files["index.html"],
                )
            doc = view.build(self.server.cluster_view(), self.server.previous_reports, user)
            return _json(200, doc)
        return _text(404, "not found\n")

    # --- sessions -------------------------------------------------------------------------

    def _token(self, request: Request) -> str | None:
        return parse_cookies(request.header("cookie")).get(COOKIE)

    def _user(self, request: Request) -> str | None:
        token = self._token(request)
        user = self.sessions.lookup(token)
        if user is None:
            return None
        # A key removed or demoted since the login ends the session.
        record = self.server.state.client(user)
        if record is None or not record.caps.admin:
            self.sessions.end_all_of(user)
            return None
        return user

    async def _login(self, request: Request) -> Response:
        peer = request.peer[0]
        if not _same_origin(request):
            return _text(403, "cross-site request refused\n")
        wait = self.throttle.wait(peer)
        if wait > 0:
            log.warning(
                "refused a dashboard login from %s: too many failures, try in %.0f s", peer, wait
            )
            return self._login_page(429, f"Too many failed logins: try again in {wait:.0f} s.")
        try:
            raw = await request.body.read_all(MAX_FORM)
        except BodyTooLarge:
            return _text(413, "form too large\n")
        try:
            form = urllib.parse.parse_qs(
                raw.decode("ascii"), keep_blank_values=True, max_num_fields=8, strict_parsing=False
            )
        except (UnicodeDecodeError, ValueError):
            form = {}
        name = (form.get("name") or [""])[0].strip()
        key = (form.get("key") or [""])[0]
        reason = check_login(self.server, name, key)
        if reason is not None:
            self.throttle.failed(peer)
            self.server.authentications[("dashboard", "refused")] += 1
            log.warning("refused dashboard login of %r from %s: %s", name[:64], peer, reason)
            return self._login_page(401, LOGIN_REFUSED)
        self.throttle.succeeded(peer)
        self.server.authentications[("dashboard", "ok")] += 1
        token = self.sessions.create(name)
        log.info("dashboard login of %r from %s", name, peer)
        return _redirect("/", [("Set-Cookie", session_cookie(token))])

    def _login_page(self, status: int, message: str) -> Response:
        page = self.files["login.html"].replace(
            b"<!--message-->",
            f'<p class="error" id="login-error">{html.escape(message)}</p>'.encode()
            if message
            else b"",
        )
        return Response(
            status,
            [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
            page,
        )


def _same_origin(request: Request) -> bool:
    """Refuse forms posted from other sites (the cookie is SameSite=Strict as well).

    Browsers say where a request comes from in Sec-Fetch-Site, older ones in Origin;
    a client that sends neither (curl, scripts) is no browser and has no cookie to abuse.
    """
    site = request.header("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.header("origin")
    if origin is None:
        return True
    host = request.header("host") or ""
    return origin == f"{request.scheme}://{host}"


def _text(status: int, text: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(
        status, [("Content-Type", "text/plain; charset=utf-8"), *(headers or [])], text.encode()
    )


def _json(status: int, doc: object) -> Response:
    return Response(
        status,
        [("Content-Type", "application/json"), ("Cache-Control", "no-store")],
        json.dumps(doc).encode(),
    )


def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(303, [("Location", location), *(headers or [])], b"")
