"""The `watch` op and `skyctl api watch`: the caller's events as they happen, in order, from
the daemon's own notifications; never another person's; a watcher that stops reading is
dropped at its bound while the others go on. Real daemon, real skyctl, real accounts."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time

import msgspec
import pytest

from conftest import ROOT, _env, wait_until
from skyctl.commands.api import events
from skyctl.connection import Connection, ServerError
from skyd import protocol
from skyd.taskspec import Task


def start_watch(popen, *args: str) -> subprocess.Popen:
    """`skyctl api watch` running, once the daemon said the watch is on."""
    p = popen("api", "watch", *args)
    line = p.stderr.readline()
    assert "watching" in line, line + p.stderr.read()
    return p


def stop_watch(p: subprocess.Popen) -> list[dict]:
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    return [json.loads(line) for line in out.splitlines()]


def popen_as_root(d):
    def popen(*args: str) -> subprocess.Popen:
        env = _env()
        env["SKYD_HOST"] = d.host
        return subprocess.Popen([sys.executable, "-m", "skyctl", *args], env=env, cwd=ROOT,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return popen


def test_api_watch_emits_a_launch_in_order(daemon):
    p = start_watch(popen_as_root(daemon))
    daemon.skyctl("launch", "-c", "w", "echo", "hi", check=True)
    daemon.skyctl("down", "-y", "w", check=True)
    got = stop_watch(p)
    launch = [e["status"] for e in got if e["kind"] == "request" and e["name"] == "launch"]
    assert launch == ["PENDING", "RUNNING", "SUCCEEDED"], got
    cluster = [e["status"] for e in got if e["kind"] == "cluster"]
    assert cluster == ["INIT", "UP", "TERMINATED"], got
    kinds = [(e["kind"], e["status"]) for e in got]
    assert kinds.index(("cluster", "UP")) < kinds.index(("request", "SUCCEEDED"))
    assert all(e["cluster"] == "w" and e["user"] == "root" for e in got), got


def test_a_managed_job_is_watched_to_its_end(daemon):
    p = start_watch(popen_as_root(daemon))
    daemon.skyctl("jobs", "launch", "-n", "mj", "echo", "hi", check=True)
    assert wait_until(lambda: daemon.call(protocol.JobsQueue(job_ids=[1]))[0].status
                      in protocol.MANAGED_FINISHED, timeout=60)
    got = [e for e in stop_watch(p) if e["kind"] == "managed_job"]
    assert [e["status"] for e in got][0] == "PENDING" and got[-1]["status"] == "SUCCEEDED", got
    assert {e["id"] for e in got} == {"1"} and {e["name"] for e in got} == {"mj"}


def test_people_never_see_each_others_events(team, people):
    alice, bob = people
    watches = {p.name: start_watch(lambda *a, p=p: p.popen(team, *a)) for p in people}
    for person in people:
        p = person.skyctl(team, "launch", "-c", f"c-{person.name}", "echo", "x")
        assert p.returncode == 0, p.stderr
    team.skyctl("launch", "-c", "c-root", "echo", "x", check=True)
    for person in people:
        got = stop_watch(watches[person.name])
        assert got and {e["uid"] for e in got} == {person.uid}, got
        assert {e["cluster"] for e in got} == {f"c-{person.name}"}, got
    p = bob.skyctl(team, "api", "watch", "-u")
    assert p.returncode == 5 and "admins only" in p.stderr, p.stderr
    # root (an admin) may watch everyone's
    p = start_watch(popen_as_root(team), "-u")
    alice.skyctl(team, "down", "-y", f"c-{alice.name}")
    got = stop_watch(p)
    assert {e["uid"] for e in got} == {alice.uid}, got


def test_the_daemon_ending_the_stream_ends_api_watch(daemon):
    p = start_watch(popen_as_root(daemon))
    daemon.stop(signal.SIGTERM)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 4 and "ended the stream" in err, err


# ---- bounded --------------------------------------------------------------------------------

def _raw_watch(path: str) -> socket.socket:
    """A watcher that reads the first frames, then nothing."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    s.settimeout(20)
    protocol.send_msg(s, protocol.Hello(protocol.PROTOCOL_VERSION, "test"))
    protocol.send_msg(s, protocol.Submit(protocol.Watch()))
    dec = msgspec.msgpack.Decoder(protocol.ServerMsg)
    assert isinstance(dec.decode(protocol.recv_frame(s)), protocol.Welcome)
    assert isinstance(dec.decode(protocol.recv_frame(s)), protocol.Notice)
    return s


def test_a_watcher_that_stops_reading_is_dropped_and_others_go_on(make_daemon, monkeypatch):
    monkeypatch.setenv("SKYD_WATCH_BUFFER", "8")
    d = make_daemon()
    slow = _raw_watch(str(d.socket))
    seen: list[tuple[float, protocol.Event]] = []
    fast = Connection(str(d.socket)).connect()
    on = threading.Event()

    def read_fast() -> None:
        try:
            for ev in events(fast, on_notice=lambda _: on.set()):
                seen.append((time.monotonic(), ev))
        except (ServerError, ConnectionError, OSError):
            pass
    reader = threading.Thread(target=read_fast, daemon=True)
    reader.start()
    assert on.wait(10)

    # One launch holds the cluster (its setup sleeps); 60 more wait behind it; all cancelled.
    d.submit_async(protocol.Launch(task=Task(setup="sleep 30", run="true"), cluster="busy"))
    ids = [d.submit_async(protocol.Launch(task=Task(run="true"), cluster="busy"))
           for _ in range(60)]
    cancelled_at = time.monotonic()
    d.call(protocol.ApiCancel(all=True))
    done = lambda: sum(1 for _, e in seen if e.status == "cancelled") >= 61  # noqa: E731
    assert wait_until(done, timeout=20), len(seen)
    last = max(t for t, e in seen if e.status == "cancelled")
    assert last - cancelled_at < 5.0          # the stalled watcher held nobody up
    assert {e.id for _, e in seen if e.status == "pending"} >= set(ids)

    # The slow one, reading again: what fit in its buffers, then why it was dropped, then EOF.
    dec = msgspec.msgpack.Decoder(protocol.ServerMsg)
    got = []
    while True:
        try:
            got.append(dec.decode(protocol.recv_frame(slow)))
        except ConnectionError:
            break
    assert isinstance(got[-1], protocol.Error) and got[-1].code == protocol.ErrorCode.BUSY, got[-3:]
    assert "watch dropped" in got[-1].message
    assert 0 < len(got) - 1 < 61 * 2, len(got)     # never every event: it was cut at its bound
    slow.close()
    assert d.call(protocol.ApiInfo()).version      # and the daemon serves on
    fast.close()
    reader.join(5)


@pytest.mark.parametrize("bad", ["0", "-1", "x"])
def test_a_bad_watch_buffer_is_a_clear_error(make_daemon, monkeypatch, bad):
    monkeypatch.setenv("SKYD_WATCH_BUFFER", bad)
    with pytest.raises(RuntimeError, match="watch_buffer"):
        make_daemon()
