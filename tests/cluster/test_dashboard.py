"""The master's dashboard in a real browser (Debian's headless Chromium via Selenium).

The page loads behind its login, shows three daemons up, and shows one down after it is
killed; screenshots of both are saved in the test's temporary directory and their paths
printed. The same cluster also serves the HTTP-level checks: no access without a session,
cross-site posts refused, failed logins throttled, strict security headers.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import signal
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from store import auth
from tests.cluster.harness import Cluster

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("dashboard"), grace=3.0)
    try:
        c.start_master(dashboard=True)
        for i in range(3):
            c.start_osd(i)
            c.wait_registered(i)
        c.cli("pool", "create", "default", "--size", "3", "--pg-num", "16")
        c.wait_healthy()
        yield c
    finally:
        c.stop()


def admin_key(cluster: Cluster) -> str:
    name, secret = auth.read_keyfile(cluster.root / "master" / "admin.key")
    assert name == "admin"
    return base64.b64encode(secret).decode()


def browser(download_dir: Path) -> WebDriver:
    for tool in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        f"--user-data-dir={download_dir / 'profile'}",
    ):
        options.add_argument(arg)
    # The cluster's CA is not in the browser's store; an operator imports tls/ca.crt.
    options.accept_insecure_certs = True
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(check: Callable[[], object], what: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except WebDriverException:
            last = None
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def daemon_rows(driver: WebDriver) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#daemons tbody tr[data-osd]")
    return {r.get_attribute("data-osd") or "": r.get_attribute("data-up") or "" for r in rows}


def test_dashboard_shows_daemons_up_then_one_down(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = f"https://127.0.0.1:{cluster.dashboard_port}"
    key = admin_key(cluster)
    driver = browser(tmp_path)
    shots: list[Path] = []
    try:
        driver.get(base + "/")
        wait_for(lambda: driver.current_url.endswith("/login"), "the redirect to the login page")

        # A wrong key: refused, and said so on the page.
        driver.find_element(By.ID, "name").clear()
        driver.find_element(By.ID, "name").send_keys("admin")
        driver.find_element(By.ID, "key").send_keys("A" * 43 + "=")
        driver.find_element(By.ID, "login").click()
        error = wait_for(
            lambda: driver.find_element(By.ID, "login-error").text, "the login error message"
        )
        assert "Login refused" in str(error)

        driver.find_element(By.ID, "name").clear()
        driver.find_element(By.ID, "name").send_keys("admin")
        driver.find_element(By.ID, "key").send_keys(key)
        driver.find_element(By.ID, "login").click()
        wait_for(
            lambda: daemon_rows(driver) == {"0": "true", "1": "true", "2": "true"},
            "three daemons up",
        )
        assert key not in driver.current_url  # the key travelled in a POST body only
        wait_for(lambda: driver.find_element(By.ID, "health").text == "HEALTH_OK", "HEALTH_OK")
        assert driver.find_element(By.ID, "tile-osds").text == "3 up / 3"
        pools = driver.find_elements(By.CSS_SELECTOR, "#pools tbody tr[data-pool='default']")
        assert len(pools) == 1
        shots.append(tmp_path / "dashboard-healthy.png")
        assert driver.save_screenshot(str(shots[-1]))

        cluster.kill("osd.2", signal.SIGKILL)
        wait_for(
            lambda: daemon_rows(driver) == {"0": "true", "1": "true", "2": "false"},
            "osd.2 shown down",
            timeout=60,
        )
        wait_for(lambda: driver.find_element(By.ID, "health").text == "HEALTH_WARN", "HEALTH_WARN")
        codes = [
            e.get_attribute("data-code")
            for e in driver.find_elements(By.CSS_SELECTOR, "#checks > li")
        ]
        assert "OSD_DOWN" in codes
        assert driver.find_element(By.ID, "tile-osds").text == "2 up / 3"
        shots.append(tmp_path / "dashboard-osd-down.png")
        assert driver.save_screenshot(str(shots[-1]))

        # Logging out ends the session: the page sends us back to the login form.
        driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
        wait_for(lambda: driver.current_url.endswith("/login"), "the login page after logout")
        driver.get(base + "/")
        wait_for(lambda: driver.current_url.endswith("/login"), "no page without a session")
    finally:
        driver.quit()
    for shot in shots:
        assert shot.stat().st_size > 10_000
    with capsys.disabled():
        for shot in shots:
            print(f"\ndashboard screenshot: {shot}")
    log = cluster.log("master")
    assert "refused dashboard login of 'admin'" in log and "wrong key" in log
    assert key not in log


# --- HTTP-level checks, without a browser ---------------------------------------------------


def request(
    cluster: Cluster,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    context = ssl.create_default_context(cafile=str(cluster.tls_dir / "ca.crt"))
    context.check_hostname = False  # the certificate names the master, not 127.0.0.1
    conn = http.client.HTTPSConnection(
        "127.0.0.1", cluster.dashboard_port, context=context, timeout=10
    )
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def login(cluster: Cluster, name: str, key: str, **headers: str) -> tuple[int, dict[str, str]]:
    form = urllib.parse.urlencode({"name": name, "key": key}).encode()
    status, answer_headers, _ = request(
        cluster,
        "POST",
        "/login",
        form,
        {"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    return status, answer_headers


def test_api_needs_a_session_and_serves_json_with_one(cluster: Cluster) -> None:
    status, headers, body = request(cluster, "GET", "/api/status")
    assert status == 401
    status, headers, _ = request(cluster, "GET", "/")
    assert status == 303 and headers["location"] == "/login"
    status, headers = login(cluster, "admin", admin_key(cluster))
    assert status == 303
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    token = cookie.split(";")[0]
    status, headers, body = request(cluster, "GET", "/api/status", headers={"Cookie": token})
    assert status == 200
    doc = json.loads(body)
    assert doc["user"] == "admin" and doc["pgs"]["total"] == 16
    assert {d["id"] for d in doc["daemons"]} == {0, 1, 2}
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    # A forged cookie is no session.
    status, _, _ = request(cluster, "GET", "/api/status", headers={"Cookie": "store_dashboard=x"})
    assert status == 401


def test_cross_site_login_refused(cluster: Cluster) -> None:
    status, _ = login(cluster, "admin", admin_key(cluster), Origin="https://evil.example")
    assert status == 403


def test_a_client_without_admin_caps_cannot_log_in(cluster: Cluster) -> None:
    keyfile = cluster.add_client("dash-reader", ["default=r"])
    _, secret = auth.read_keyfile(keyfile)
    status, _ = login(cluster, "dash-reader", base64.b64encode(secret).decode())
    assert status == 401
    assert "not an admin key" in cluster.log("master")


def test_failed_logins_are_throttled(cluster: Cluster) -> None:
    # The browser test's one failure may already count; five more certainly hit the limit.
    statuses = [login(cluster, "nobody", "bm90IGEga2V5")[0] for _ in range(6)]
    assert statuses[0] == 401
    assert statuses[-1] == 429
    # Even the right key waits out the throttle from this address.
    assert login(cluster, "admin", admin_key(cluster))[0] == 429
    assert "too many failures" in cluster.log("master")
