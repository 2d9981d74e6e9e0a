"""Helpers of the HTTP side's tests: a daemon started with `--http` on a free loopback
port, plain GETs, a parsed /metrics, the dashboard's event stream read as a script would."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, frozenset[tuple[str, str]]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_with_http(make_daemon, *args: str, **kw):
    """A daemon serving HTTP on a free loopback port (retried if another took the port)."""
    for attempt in range(3):
        port = free_port()
        try:
            d = make_daemon("--http", f"127.0.0.1:{port}", *args, **kw)
        except RuntimeError as e:
            if "Address already in use" in str(e) and attempt < 2:
                continue
            raise
        d.base = f"http://127.0.0.1:{port}"
        return d
    raise AssertionError("unreachable")


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer, not an exception."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(base: str) -> dict[Sample, float]:
    """/metrics parsed by prometheus-client's own parser: (name, labels) -> value."""
    status, text = get(base + "/metrics")
    assert status == 200, text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[Sample, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# The dashboard's first state, read by a person's own process (the uid of the socket that
# connects is who the daemon shows work to). Standard library only: the test accounts may
# run a system interpreter without our dependencies.
READ_STATE = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1] + "/api/events", timeout=20) as r:
    event = None
    for line in r:
        line = line.decode().rstrip("\\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "state":
            print(line[6:])
            break
"""


def state_as(person, base: str) -> dict:
    p = person.python_call(READ_STATE.replace("sys.argv[1]", repr(base)))
    assert p.returncode == 0, (p.stdout, p.stderr)
    return json.loads(p.stdout)


def state_as_root(base: str) -> dict:
    with urllib.request.urlopen(base + "/api/events", timeout=20) as r:
        event = None
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "state":
                return json.loads(line[6:])
    raise AssertionError("the stream ended before a state event")


def wait_for(pred, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def require_tool(name: str) -> str:
    """A program the test needs: skip without it, unless in CI (CI=1), where it must exist."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} is missing: .ci/run installs it (CI=1)")
        pytest.skip(f"{name} is not installed")
    return path
