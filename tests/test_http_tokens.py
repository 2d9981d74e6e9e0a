"""The HTTP side off loopback (`--http 0.0.0.0:PORT`): TLS with a certificate made here, and
a bearer token on every request, checked against the TCP listener's token file (hashed,
expiry, revocation); the token's user decides what the dashboard shows, as on the socket.
A real daemon over real HTTPS (http.client, so that redirects and cookies are seen as
sent); the browser's cookie flow in a real headless chromium. Bound on every interface, as
test_remote_tcp's TLS test does, and reached on 127.0.0.1 only: a loopback *peer* of a
socket bound off loopback still needs a token."""

from __future__ import annotations

import contextlib
import signal
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, wait_until, write_task
from http_side import free_port, require_tool
from skyd import protocol
from skyd.server.remote import BAD_TOKEN_DELAY
from tcpclient import new_token, self_signed, skyd_token

COOKIE = "__Host-skyd-token"


class Https:
    """Requests to the daemon's HTTP side over TLS, trusting the test's certificate."""

    def __init__(self, port: int, cert: Path):
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(cert))

    def conn(self, timeout: float = 20) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx,
                                           timeout=timeout)

    def request(self, method: str, path: str, token: str | None = None, cookie: str | None = None,
                body: str | None = None, headers: dict[str, str] | None = None
                ) -> tuple[http.client.HTTPResponse, str, float]:
        """(response, body, seconds it took); redirects are not followed."""
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if cookie is not None:
            h["Cookie"] = f"{COOKIE}={cookie}"
        c = self.conn()
        t0 = time.monotonic()
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            text = r.read().decode()
            return r, text, time.monotonic() - t0
        finally:
            c.close()

    def get(self, path: str, **kw) -> tuple[int, str, float]:
        r, text, took = self.request("GET", path, **kw)
        return r.status, text, took

    @contextlib.contextmanager
    def events(self, **kw):
        """The dashboard's event stream, open: yields a function returning the next
        (event, data) pair, or None once the stream ended."""
        h = {"Authorization": f"Bearer {kw['token']}"} if "token" in kw else {}
        if "cookie" in kw:
            h["Cookie"] = f"{COOKIE}={kw['cookie']}"
        c = self.conn()
        try:
            c.request("GET", "/api/events", headers=h)
            r = c.getresponse()
            assert r.status == 200, (r.status, r.read())

            def next_event() -> tuple[str, dict] | None:
                event = None
                for raw in r:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event is not None:
                        return event, json.loads(line[6:])
                return None
            yield next_event
        finally:
            c.close()

    def state(self, **kw) -> dict:
        """The dashboard's first state for this token (or cookie)."""
        with self.events(**kw) as next_event:
            while (got := next_event()) is not None:
                if got[0] == "state":
                    return got[1]
        raise AssertionError("the stream ended before a state event")


def start_tls(make_daemon, workdir: Path, *args: str):
    """A daemon serving HTTPS on every interface (port free on 127.0.0.1), and its client."""
    cert, key = self_signed(workdir)
    for attempt in range(3):
        port = free_port()
        try:
            d = make_daemon("--http", f"0.0.0.0:{port}", "--tls-cert", str(cert),
                            "--tls-key", str(key), *args)
        except RuntimeError as e:
            if "Address already in use" in str(e) and attempt < 2:
                continue
            raise
        return d, Https(port, cert)
    raise AssertionError("unreachable")


def _serve(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "skyd", "serve", "--skip-resources-check", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def _delayed(took: float) -> None:
    assert BAD_TOKEN_DELAY * 0.95 <= took < BAD_TOKEN_DELAY + 3, took


def test_off_loopback_without_tls_is_refused_at_start(workdir):
    p = _serve("--state-dir", str(workdir / "a"), "--http", "0.0.0.0:9090")
    assert p.returncode == 2, p.stderr
    assert "refusing to serve HTTP on 0.0.0.0:9090 without TLS" in p.stderr, p.stderr
    assert "tls_cert" in p.stderr and "ssh -L 9090:127.0.0.1:9090" in p.stderr
    cfg = workdir / "c.yaml"
    cfg.write_text("http: '[::]:9091'\n")                   # the config file's key, IPv6
    p = _serve("--state-dir", str(workdir / "b"), "--config", str(cfg))
    assert p.returncode == 2 and "refusing to serve HTTP on [::]:9091 without TLS" in p.stderr
    p = _serve("--state-dir", str(workdir / "c"), "--http", "0.0.0.0:9090", "--tls-cert",
               str(workdir / "cert.pem"))
    assert p.returncode == 2 and "give both tls_cert and tls_key" in p.stderr
    assert not any((workdir / n).exists() for n in "abc")   # refused before anything was touched


def test_every_request_needs_a_valid_token(make_daemon, workdir, people):
    alice = people[0]
    d, web = start_tls(make_daemon, workdir)
    assert f"HTTP on https://0.0.0.0:{web.port}/" in d.log()
    good = new_token(d, "alice-web", "--user", alice.name)
    wrong = "skyd_" + "x" * 43
    # Probes stay open, at once: a load balancer has no token.
    for path, text in (("/healthz", "ok\n"), ("/readyz", "ready\n")):
        status, body, took = web.get(path)
        assert (status, body) == (200, text) and took < BAD_TOKEN_DELAY / 2
    # No token, a wrong one: 401 after the TCP listener's delay, on data and on /metrics.
    r, body, took = web.request("GET", "/api/events")
    assert r.status == 401 and "needs a token" in body, body
    assert r.getheader("WWW-Authenticate", "").startswith("Bearer")
    _delayed(took)
    for path in ("/api/events", "/metrics", f"/api/requests/{'0' * 8}/log", "/api/me"):
        status, body, took = web.get(path, token=wrong)
        assert status == 401 and "invalid token" in body, (path, status, body)
        _delayed(took)
    status, body, _ = web.get("/")                          # a person: the login form
    assert status == 401 and '<form method="post" action="/login">' in body
    # The good token: the metrics, the viewer.
    status, body, took = web.get("/metrics", token=good)
    assert status == 200 and "skyd_build_info" in body and took < BAD_TOKEN_DELAY / 2
    status, body, _ = web.get("/api/me", token=good)
    assert status == 200 and json.loads(body) == {"user": alice.name, "uid": alice.uid,
                                                  "admin": False}
    # Expired: refused with its name; revoked: as unknown, at once.
    short = new_token(d, "short", "--user", alice.name, "--expires", "1s")
    time.sleep(1.1)
    status, body, took = web.get("/api/me", token=short)
    assert status == 401 and "token 'short' expired on" in body, body
    _delayed(took)
    assert skyd_token(d, "revoke", "alice-web").returncode == 0
    status, body, _ = web.get("/metrics", token=good)
    assert status == 401 and "invalid token" in body, body
    # Clear text to the TLS port gets nothing.
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert b"ok" not in s.recv(4096)
    # Nothing of what was sent is logged; each wrong or refused token is, with its address
    # (no token at all is no guess: not logged, not counted).
    log = d.log()
    assert good not in log and wrong not in log and short not in log
    assert log.count("refused an HTTP request from 127.0.0.1") == 6


def test_an_address_that_keeps_failing_waits(make_daemon, workdir):
    cfg = workdir / "limits.yaml"
    cfg.write_text("tcp_auth_failures: 2\n")
    d, web = start_tls(make_daemon, workdir, "--config", str(cfg))
    good = new_token(d, "good")
    for _ in range(2):
        assert web.get("/api/me", token="skyd_wrong")[0] == 401
    r, body, took = web.request("GET", "/api/me", token=good)    # even a good one, for the minute
    assert r.status == 429 and "too many failed" in body, (r.status, body)
    assert took < BAD_TOKEN_DELAY / 2 and int(r.getheader("Retry-After", "0")) >= 1
    assert web.get("/healthz")[0] == 200


def _running(d, person, workdir: Path, cluster: str) -> str:
    slow = write_task(workdir, f"{cluster}.yaml", "setup: sleep 30\n")
    p = person.skyctl(d, "launch", "--async", "-c", cluster, str(slow), cwd="/tmp")
    assert p.returncode == 0, p.stderr
    rid = p.stdout.strip()
    assert wait_until(lambda: d.request(rid).status is protocol.Status.RUNNING, 15)
    return rid


def test_a_token_sees_its_users_work_and_an_admin_token_everyones(make_daemon, workdir, people):
    """Read by this test's own process (root): what it sees is the token's user's, not root's."""
    import users
    alice, bob = people
    os.chmod(workdir, 0o755)
    d, web = start_tls(make_daemon, workdir, "--socket-group", users.GROUP)
    a = _running(d, alice, workdir, "a1")
    b = _running(d, bob, workdir, "b1")
    alices, bobs = new_token(d, "alice", "--user", alice.name), new_token(d, "bob", "--user", bob.name)
    admin = new_token(d, "alice-admin", "--user", alice.name, "--admin")
    mine = web.state(token=alices)
    assert [r["id"] for r in mine["requests"]] == [a]
    assert [c["cluster"]["name"] for c in mine["clusters"]] == ["a1"]
    assert bob.name not in json.dumps(mine) and b not in json.dumps(mine)
    his = web.state(token=bobs)
    assert [r["id"] for r in his["requests"]] == [b]
    every = web.state(token=admin)                     # the token says admin
    assert {r["id"] for r in every["requests"]} == {a, b}
    assert {c["cluster"]["name"] for c in every["clusters"]} == {"a1", "b1"}
    # The hello names the token's user; someone else's log answers as a missing request.
    with web.events(token=alices) as next_event:
        assert next_event() == ("hello", {"user": alice.name, "uid": alice.uid, "admin": False})
    status, body, _ = web.get(f"/api/requests/{b}/log", token=alices)
    assert status == 404 and "no request matches" in body, body
    c = web.conn()                  # her own: followed while it runs (read the start only)
    c.request("GET", f"/api/requests/{a}/log", headers={"Authorization": f"Bearer {alices}"})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type", "").startswith("text/event-stream")
    c.close()
    # A stream open when its token is revoked ends (checked every few seconds).
    with web.events(token=alices) as next_event:
        assert next_event() is not None
        assert skyd_token(d, "revoke", "alice").returncode == 0
        t0 = time.monotonic()
        while next_event() is not None:
            assert time.monotonic() - t0 < 15, "the stream went on after its token was revoked"


def test_the_browser_cookie_flow(make_daemon, workdir, people):
    alice = people[0]
    d, web = start_tls(make_daemon, workdir)
    token = new_token(d, "alice-browser", "--user", alice.name, "--expires", "2h")
    # A link with ?token=: the token goes into a cookie, the browser to the page without it.
    r, _, _ = web.request("GET", f"/?token={token}")
    assert r.status == 303 and r.getheader("Location") == "/", r.getheader("Location")
    cookie = r.getheader("Set-Cookie", "")
    assert cookie.startswith(f"{COOKIE}={token};"), cookie
    attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite", "path", "max-age"} <= attrs, cookie
    assert "SameSite=Strict" in cookie and "Path=/" in cookie and "Domain" not in cookie
    assert 7000 < int(cookie.split("Max-Age=")[1].split(";")[0]) <= 7200     # the token's life
    assert r.getheader("Cache-Control") == "no-store"
    r, _, _ = web.request("GET", f"/api/events?x=1&token={token}")
    assert r.status == 303 and r.getheader("Location") == "/api/events?x=1"
    # The cookie is the token from then on: the page, the viewer, the stream.
    status, body, _ = web.get("/", cookie=token)
    assert status == 200 and "<title>skyd</title>" in body
    assert json.loads(web.get("/api/me", cookie=token)[1])["user"] == alice.name
    assert web.state(cookie=token)["ready"] is True
    # The login form: posted by our page, the same cookie; by another site's, refused.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    origin = f"https://127.0.0.1:{web.port}"
    r, _, _ = web.request("POST", "/login", body=f"token={token}", headers={**form, "Origin": origin})
    assert r.status == 303 and r.getheader("Location") == "/"
    assert r.getheader("Set-Cookie", "").startswith(f"{COOKIE}={token};")
    r, _, _ = web.request("POST", "/login", body=f"token={token}",
                          headers={**form, "Origin": "https://evil.example"})
    assert r.status == 403 and r.getheader("Set-Cookie") is None
    r, body, took = web.request("POST", "/login", body="token=skyd_wrong",
                                headers={**form, "Origin": origin})
    assert r.status == 401 and "invalid token" in body and "<form" in body
    assert r.getheader("Set-Cookie") is None
    _delayed(took)
    # A wrong ?token= sets nothing; a revoked token's cookie no longer opens anything.
    r, _, took = web.request("GET", "/?token=skyd_wrong")
    assert r.status == 401 and r.getheader("Set-Cookie") is None
    assert web.get("/login")[0] == 200                      # the form itself is open
    assert skyd_token(d, "revoke", "alice-browser").returncode == 0
    assert web.get("/api/me", cookie=token)[0] == 401
    assert token not in d.log()


def test_a_real_browser_logs_in_with_a_link_and_out_when_revoked(make_daemon, workdir, people):
    """Headless chromium: the link's token ends in an HttpOnly cookie (no script sees it,
    the address bar keeps no token), the page goes live as the token's user, and once the
    token is revoked the page sends its person to the login form."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium, driver = require_tool("chromium"), require_tool("chromedriver")
    alice = people[0]
    d, web = start_tls(make_daemon, workdir)
    token = new_token(d, "alice-chromium", "--user", alice.name)
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={workdir / 'profile'}", "--ignore-certificate-errors"):
        options.add_argument(arg)
    b = webdriver.Chrome(service=Service(driver), options=options)
    try:
        base = f"https://127.0.0.1:{web.port}"
        b.get(f"{base}/?token={token}")
        assert wait_until(lambda: b.find_element("id", "viewer").text == alice.name, 20), \
            b.page_source[:2000]
        assert wait_until(lambda: b.find_element("id", "link").text == "live", 20)
        assert b.current_url == base + "/"
        assert b.execute_script("return document.cookie") == ""      # HttpOnly
        assert [c["name"] for c in b.get_cookies()] == [COOKIE]
        assert skyd_token(d, "revoke", "alice-chromium").returncode == 0
        assert wait_until(lambda: b.current_url == base + "/login", 30), b.current_url
        assert "Log in with a token" in b.page_source
    finally:
        b.quit()


def test_a_renewed_certificate_is_served_after_sighup(make_daemon, workdir):
    d, web = start_tls(make_daemon, workdir)
    assert web.get("/healthz")[0] == 200
    (workdir / "renewed").mkdir()
    cert2, key2 = self_signed(workdir / "renewed")
    cert, key = workdir / cert2.name, workdir / key2.name       # the files the daemon reads
    cert.write_bytes(cert2.read_bytes())
    key.write_bytes(key2.read_bytes())
    d.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "reload: configuration read again" in d.log(), 10)
    assert Https(web.port, cert2).get("/healthz")[0] == 200     # new handshakes: the new one
    with pytest.raises(ssl.SSLCertVerificationError):
        web.get("/healthz")                                      # trusting only the old one
