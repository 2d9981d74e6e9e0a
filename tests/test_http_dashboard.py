"""The dashboard (issue 16) in a real headless chromium driven with Selenium, each browser
run as a real person (chromedriver started as skyd-alice or skyd-bob), so that its loopback
connection carries that person's uid: a request submitted with skyctl appears within a
second, its log is followed live, and a person's page never shows another's work. The
event stream is also read by each person's own script, and by root (an admin).

Without chromium the browser tests skip, unless CI=1 (.ci/run installs it): then they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import wait_until, write_task
from http_side import require_tool, start_with_http, state_as, state_as_root
from skyd import protocol

PAGE_TIMEOUT = 20.0


@pytest.fixture
def alice(people):
    return people[0]


@pytest.fixture
def bob(people):
    return people[1]


@pytest.fixture
def dash(make_daemon, workdir, people):
    """A root daemon open to alice and bob (the group skyd-users), serving HTTP."""
    import users
    os.chmod(workdir, 0o755)
    return start_with_http(make_daemon, "--socket-group", users.GROUP)


def run(person, d, *args: str):
    p = person.skyctl(d, *args, cwd="/tmp")
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


class Browser:
    """Headless chromium, driven through a chromedriver running as `person`."""

    def __init__(self, person):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        self.profile = tempfile.mkdtemp(prefix="skyd-chromium-", dir="/tmp")
        os.chown(self.profile, person.uid, person.gid)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]

        def become() -> None:
            os.initgroups(person.name, person.gid)
            os.setgid(person.gid)
            os.setuid(person.uid)
        self.driver_proc = subprocess.Popen(
            [require_tool("chromedriver"), f"--port={port}"], preexec_fn=become,
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"HOME": self.profile, "PATH": "/usr/bin:/bin"}, cwd=self.profile)
        assert wait_until(lambda: _listening(port), 15), "chromedriver did not start"
        options = Options()
        options.binary_location = require_tool("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={self.profile}", "--window-size=1400,1100"):
            options.add_argument(arg)
        self.b = webdriver.Remote(command_executor=f"http://127.0.0.1:{port}", options=options)

    def open(self, base: str) -> None:
        self.b.get(base + "/")
        self.until(lambda: self.text("link") == "live" and self.css("#queues tr[data-queue]"),
                   "the page did not go live")

    def css(self, selector: str) -> list:
        from selenium.webdriver.common.by import By
        return self.b.find_elements(By.CSS_SELECTOR, selector)

    def text(self, element_id: str) -> str:
        from selenium.webdriver.common.by import By
        return self.b.find_element(By.ID, element_id).text

    def until(self, pred, what: str, timeout: float = PAGE_TIMEOUT, poll: float = 0.02):
        """`pred()` once true; the page re-renders its tables at every update, so an
        element found a moment ago may be gone: then look again."""
        from selenium.common.exceptions import StaleElementReferenceException
        deadline = time.monotonic() + timeout
        while True:
            try:
                v = pred()
            except StaleElementReferenceException:
                v = None
            if v:
                return v
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} within {timeout} s; page:\n{self.b.page_source[:3000]}")
            time.sleep(poll)

    def screenshot(self, name: str) -> str:
        path = os.path.join(tempfile.mkdtemp(prefix="skyd-dashboard-"), name)
        self.b.save_screenshot(path)
        print(f"dashboard screenshot: {path}")
        return path

    def close(self) -> None:
        try:
            self.b.quit()
        finally:
            with_group = self.driver_proc.pid
            try:
                os.killpg(with_group, signal.SIGKILL)     # chromedriver and what it started
            except ProcessLookupError:
                pass
            self.driver_proc.wait(10)
            shutil.rmtree(self.profile, ignore_errors=True)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def browsers():
    """Open a browser as a person: browsers(alice); all are closed at the end."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    require_tool("chromium")
    require_tool("chromedriver")
    opened: list[Browser] = []

    def open_as(person) -> Browser:
        b = Browser(person)
        opened.append(b)
        return b
    yield open_as
    for b in opened:
        b.close()


def test_a_new_request_appears_within_a_second_and_its_log_follows_live(dash, workdir, alice,
                                                                          browsers):
    page = browsers(alice)
    page.open(dash.base)
    assert page.text("viewer") == alice.name
    task = write_task(workdir, "lines.yaml",
                      "setup: for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.5; done\n"
                      "run: echo done\n")
    rid = run(alice, dash, "launch", "--async", "-c", "web1", str(task)).strip()
    accepted = time.monotonic()
    page.until(lambda: page.css(f'#requests tr[data-id="{rid}"]'), "the request did not appear")
    appeared = time.monotonic() - accepted
    print(f"the request appeared on the page {appeared:.2f} s after it was accepted")
    assert appeared <= 1.0, f"the request appeared {appeared:.2f} s after it was accepted"
    page.until(lambda: [r.click() for r in page.css(f'#requests tr[data-id="{rid}"]')],
               "its row could not be clicked")
    assert page.until(lambda: page.text("log-id") == rid, "its log did not open")
    first = page.until(lambda: "line-1" in page.text("log") and page.text("log"),
                       "its first lines did not arrive")
    assert "line-8" not in first, first                  # followed while it runs...
    page.until(lambda: "line-8" in page.text("log"), "later lines did not arrive")
    page.until(lambda: page.text("log-status") == "succeeded", "its end did not arrive")
    log = page.text("log")
    assert [f"line-{i}" in log for i in range(1, 9)] == [True] * 8
    assert log.index("line-1") < log.index("line-8")
    page.until(lambda: [r.get_attribute("data-status") for r in
                        page.css(f'#requests tr[data-id="{rid}"]')] == ["succeeded"],
               "its row did not turn succeeded")
    page.until(lambda: page.css('#clusters tr[data-cluster="web1"]'), "its cluster did not appear")
    path = page.screenshot("alice-request-log.png")
    # The filters: by status, op and user, over what the page holds.
    from selenium.webdriver.support.select import Select
    status = Select(page.b.find_element("id", "filter-status"))
    page.until(lambda: [o.text for o in status.options] == ["all", "succeeded"],
               "the status filter does not offer what the page holds")
    status.select_by_visible_text("succeeded")
    page.until(lambda: page.css(f'#requests tr[data-id="{rid}"]'), "the filter hid a match")
    Select(page.b.find_element("id", "filter-op")).select_by_visible_text("launch")
    assert page.text("requests-count") == "1 of 1 shown"
    page.b.execute_script("const s = document.getElementById('filter-status');"
                          "s.add(new Option('failed', 'failed')); s.value = 'failed';"
                          "s.dispatchEvent(new Event('change'));")
    page.until(lambda: page.text("requests-count") == "0 of 1 shown", "the filter did not apply")
    assert not page.css(f'#requests tr[data-id="{rid}"]')
    assert os.path.getsize(path) > 10_000


def test_a_persons_page_shows_only_their_own_work(dash, workdir, alice, bob, browsers):
    slow = write_task(workdir, "slow.yaml", "setup: sleep 30\n")
    bobs = run(bob, dash, "launch", "--async", "-c", "bobs-secret", str(slow)).strip()
    assert wait_until(lambda: dash.request(bobs).status is protocol.Status.RUNNING, 15)
    alices = run(alice, dash, "launch", "--async", "-c", "alices", "echo hi").strip()
    a_page, b_page = browsers(alice), browsers(bob)
    a_page.open(dash.base)
    b_page.open(dash.base)
    a_page.until(lambda: a_page.css(f'#requests tr[data-id="{alices}"]'), "her request is missing")
    a_page.until(lambda: a_page.css('#clusters tr[data-cluster="alices"]'), "her cluster is missing")
    b_page.until(lambda: b_page.css(f'#requests tr[data-id="{bobs}"]'), "his request is missing")
    seen_by_alice, seen_by_bob = a_page.b.page_source, b_page.b.page_source
    for secret in (bobs, bobs[:8], "bobs-secret", bob.name):
        assert secret not in seen_by_alice, secret
    for secret in (alices, alices[:8], "alices", alice.name):
        assert secret not in seen_by_bob, secret
    a_page.screenshot("alice-own-work.png")
    # Bob's request's log answers her exactly as a request that does not exist.
    ghost = str(uuid.uuid4())
    a_page.b.get(dash.base + f"/api/requests/{bobs}/log")
    as_missing = a_page.b.find_element("tag name", "body").text.replace(bobs, "<id>")
    a_page.b.get(dash.base + f"/api/requests/{ghost}/log")
    assert a_page.b.find_element("tag name", "body").text.replace(ghost, "<id>") == as_missing
    assert "no request matches" in as_missing


def test_event_stream_is_each_persons_own_and_an_admins_is_everyones(dash, workdir, alice, bob):
    """Without a browser: each person's own script reads the dashboard's first state."""
    slow = write_task(workdir, "slow.yaml", "setup: sleep 30\n")
    a = run(alice, dash, "launch", "--async", "-c", "a1", str(slow)).strip()
    b = run(bob, dash, "launch", "--async", "-c", "b1", str(slow)).strip()
    for rid in (a, b):
        assert wait_until(lambda: dash.request(rid).status is protocol.Status.RUNNING, 15)
    mine = state_as(alice, dash.base)
    assert [r["id"] for r in mine["requests"]] == [a]
    assert [c["cluster"]["name"] for c in mine["clusters"]] == ["a1"]
    assert bob.name not in str(mine)
    his = state_as(bob, dash.base)
    assert [r["id"] for r in his["requests"]] == [b]
    every = state_as_root(dash.base)                 # root is an admin
    assert {r["id"] for r in every["requests"]} == {a, b}
    assert {c["cluster"]["name"] for c in every["clusters"]} == {"a1", "b1"}
    # The queues are the same for everyone: counts, no names.
    assert mine["queues"] == his["queues"] == every["queues"]
    assert [q["running"] for q in every["queues"] if q["queue"] == "long"] == [2]
