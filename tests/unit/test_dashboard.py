"""The dashboard without a browser: sessions, the login throttle, the page's data, routes."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest

from store.auth import Caps
from store.gateways.web.server import BodyTooLarge, Request, Response
from store.health import ClusterView
from store.master.dashboard import view
from store.master.dashboard.handler import Dashboard, check_login
from store.master.dashboard.sessions import (
    COOKIE,
    LoginSessions,
    LoginThrottle,
    parse_cookies,
    session_cookie,
)
from store.master.state import MasterState
from tests.unit.test_health import cluster_map, healthy_reports, status


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_and_end() -> None:
    clock = Clock()
    sessions = LoginSessions(ttl=10, clock=clock, max_sessions=2)
    a = sessions.create("admin")
    assert sessions.lookup(a) == "admin"
    assert sessions.lookup("forged") is None and sessions.lookup(None) is None
    assert sessions.lookup("x" * 10_000) is None
    clock.now += 11
    assert sessions.lookup(a) is None
    b, c, d = sessions.create("a"), sessions.create("b"), sessions.create("b")
    assert len(sessions) == 2 and sessions.lookup(b) is None  # the oldest went
    sessions.end(c)
    assert sessions.lookup(c) is None and sessions.lookup(d) == "b"
    sessions.end_all_of("b")
    assert sessions.lookup(d) is None


def test_throttle() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.wait("1.2.3.4") == 0
        throttle.failed("1.2.3.4")
    assert throttle.wait("1.2.3.4") == 60
    assert throttle.wait("5.6.7.8") == 0  # others are not affected
    clock.now += 30
    assert throttle.wait("1.2.3.4") == 30
    clock.now += 31
    assert throttle.wait("1.2.3.4") == 0
    throttle.failed("1.2.3.4")
    throttle.succeeded("1.2.3.4")
    assert throttle.wait("1.2.3.4") == 0


def test_cookies() -> None:
    assert parse_cookies('a=1; store_dashboard="tok"; a=2; junk; =x') == {
        "a": "1",
        COOKIE: "tok",
    }
    assert parse_cookies(None) == {} and parse_cookies("x" * 9000) == {}
    cookie = session_cookie("tok")
    assert cookie.startswith(f"{COOKIE}=tok;")
    assert all(part in cookie for part in ("Secure", "HttpOnly", "SameSite=Strict"))


def test_rates_between_reports() -> None:
    prev = {"received": 10.0, "ops": {"read": 100, "write": 50}, "data_bytes": {"read": 1000}}
    cur = {"received": 12.0, "ops": {"read": 300, "write": 40}, "data_bytes": {"read": 5000}}
    r = view.rates(cur, prev)
    assert r["read_ops"] == 100 and r["read_bytes"] == 2000
    assert r["write_ops"] == 0  # counters went back: a restart, not negative traffic
    assert view.rates(cur, None)["read_ops"] == 0
    assert view.rates(cur, {**prev, "received": 12.0})["read_ops"] == 0


def test_page_document() -> None:
    reports = healthy_reports()
    for i, r in reports.items():
        r["received"] = 20.0
        r["ops"] = {"read": 10 * (i + 1), "write": 0}
        # Two PGs of pool 1, one of a pool the map does not have, and garbage.
        r["pg_list"] = [[1, 0, "active+clean"], [1, 1, "active+clean"], [7, 0, "x"], ["nope"]]
    del reports[2]  # the master sends only the reports of up daemons
    previous = {0: {"received": 10.0, "ops": {"read": 0}}}
    cluster = ClusterView.from_status(status(cluster_map(up=(True, True, False)), reports))
    doc = view.build(cluster, previous, "admin")
    assert doc["user"] == "admin" and doc["health"] == "HEALTH_WARN"
    assert [d["up"] for d in doc["daemons"]] == [True, True, False]
    assert "rates" not in doc["daemons"][2] and "disk_total" not in doc["daemons"][2]
    assert doc["daemons"][0]["rates"]["read_ops"] == 1.0
    assert doc["throughput"]["read_ops"] == 1.0
    assert doc["pools"] == [
        {
            "id": 1,
            "name": "default",
            "size": 3,
            "min_size": 2,
            "pg_num": 8,
            "encrypt": True,
            "pg_states": {"active+clean": 4},
        }
    ]
    assert doc["osds"] == {"total": 3, "up": 2, "in": 3}


class Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read_all(self, limit: int) -> bytes:
        if len(self.data) > limit:
            raise BodyTooLarge(limit)
        return self.data


def req(method: str, path: str, body: bytes = b"", **headers: str) -> Request:
    return Request(
        method,
        path,
        [(k.replace("_", "-").lower(), v) for k, v in headers.items()],
        "1.1",
        "https",
        ("10.9.8.7", 5000),
        Body(body),  # type: ignore[arg-type]
    )


@pytest.fixture
def dashboard(tmp_path: Path) -> Any:
    state = MasterState(tmp_path / "master")
    admin = state.ensure_admin()
    assert admin is not None
    reader = state.client_add("reader", Caps.parse(["default=r"]))
    server = SimpleNamespace(
        state=state,
        authentications=Counter(),
        previous_reports={},
        cluster_view=lambda: ClusterView.from_status(status(cluster_map(), healthy_reports())),
    )
    d = Dashboard(server)  # type: ignore[arg-type]
    d.keys = {
        "admin": base64.b64encode(admin).decode(),
        "reader": base64.b64encode(reader).decode(),
    }
    yield d
    state.close()


def form(name: str, key: str) -> bytes:
    return urlencode({"name": name, "key": key}).encode()


def cookie_of(response: Response) -> str:
    value = response.header("set-cookie")
    assert value is not None
    return value.split(";")[0]


async def test_login_flow_and_routes(dashboard: Any) -> None:
    assert (await dashboard.handle(req("GET", "/"))).header("location") == "/login"
    assert (await dashboard.handle(req("GET", "/api/status"))).status == 401
    page = await dashboard.handle(req("GET", "/login"))
    assert page.status == 200 and b"<form" in page.body
    assert "script-src 'self'" in (page.header("content-security-policy") or "")

    refused = await dashboard.handle(req("POST", "/login", form("admin", "AAAA")))
    assert refused.status == 401 and b"Login refused" in refused.body
    assert dashboard.server.authentications[("dashboard", "refused")] == 1

    ok = await dashboard.handle(req("POST", "/login", form("admin", dashboard.keys["admin"])))
    assert ok.status == 303 and ok.header("location") == "/"
    cookie = cookie_of(ok)
    index = await dashboard.handle(req("GET", "/", cookie=cookie))
    assert index.status == 200 and b"/static/app.js" in index.body
    api = await dashboard.handle(req("GET", "/api/status", cookie=cookie))
    assert api.status == 200 and b'"user": "admin"' in api.body
    for path in ("/static/app.js", "/static/style.css"):
        assert (await dashboard.handle(req("GET", path))).status == 200
    assert (await dashboard.handle(req("GET", "/static/../handler.py"))).status == 404
    assert (await dashboard.handle(req("DELETE", "/"))).status == 405
    assert (await dashboard.handle(req("GET", "/logout"))).status == 405

    out = await dashboard.handle(req("POST", "/logout", cookie=cookie))
    assert out.status == 303 and "Max-Age=0" in (out.header("set-cookie") or "")
    assert (await dashboard.handle(req("GET", "/api/status", cookie=cookie))).status == 401


async def test_a_removed_admin_loses_the_session(dashboard: Any) -> None:
    dashboard.server.state.client_add("ops", Caps(admin=True))
    record = dashboard.server.state.client("ops")
    ok = await dashboard.handle(
        req("POST", "/login", form("ops", base64.b64encode(record.secret).decode()))
    )
    cookie = cookie_of(ok)
    assert (await dashboard.handle(req("GET", "/api/status", cookie=cookie))).status == 200
    dashboard.server.state.client_rm("ops")
    assert (await dashboard.handle(req("GET", "/api/status", cookie=cookie))).status == 401


async def test_refusals(dashboard: Any) -> None:
    cross = req(
        "POST", "/login", form("admin", dashboard.keys["admin"]), sec_fetch_site="cross-site"
    )
    assert (await dashboard.handle(cross)).status == 403
    other = req(
        "POST", "/login", form("admin", dashboard.keys["admin"]), origin="https://evil", host="m:1"
    )
    assert (await dashboard.handle(other)).status == 403
    same = req(
        "POST", "/login", form("admin", dashboard.keys["admin"]), origin="https://m:1", host="m:1"
    )
    assert (await dashboard.handle(same)).status == 303
    big = req("POST", "/login", b"name=admin&key=" + b"A" * 10_000)
    assert (await dashboard.handle(big)).status == 413
    garbage = req("POST", "/login", b"\xff\xfe%%%&&&===")
    assert (await dashboard.handle(garbage)).status == 401


def test_check_login_reasons(dashboard: Any) -> None:
    server = dashboard.server
    assert check_login(server, "admin", dashboard.keys["admin"]) is None
    assert check_login(server, "admin", "not base64!") == "wrong key"
    assert check_login(server, "admin", base64.b64encode(b"x" * 32).decode()) == "wrong key"
    assert check_login(server, "nobody", dashboard.keys["admin"]) == "unknown client"
    assert check_login(server, "reader", dashboard.keys["reader"]) == "not an admin key"
    assert check_login(server, "../etc", "x") == "not a client name"
