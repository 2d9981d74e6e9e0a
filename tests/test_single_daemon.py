"""One daemon per state directory, and nothing of a first run alive when it is re-run:
a second `skyd serve` is refused before it touches anything; after `kill -9` of the
daemon its workers (and the setups they run) die with it, and a restarted daemon kills
whatever of the previous run is left before recovery re-runs anything."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

from conftest import Daemon, wait_until
from skyd import protocol
from skyd.taskspec import Task


def _launch(cluster: str, setup: str, run: str | None = None) -> protocol.Launch:
    return protocol.Launch(task=Task(setup=setup, run=run), cluster=cluster)


def _first_run(pid: int) -> list[psutil.Process]:
    """Everything the daemon started: forkserver, resource tracker, workers, setups."""
    return psutil.Process(pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running (same pid *and* start time; a zombie counts as gone)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _lines(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _request_log(d: Daemon, rid: str) -> str:
    return (d.state_dir / "logs" / "requests" / f"{rid}.log").read_text(errors="replace")


def test_second_daemon_on_same_state_dir_is_refused_without_touching_anything(
        make_daemon, workdir):
    d = make_daemon()
    marker = workdir / "setup-runs"
    rid = d.submit_async(_launch("one", f"echo run >> {marker}; sleep 30", "true"))
    assert wait_until(marker.exists, 15)
    db = d.state_dir / "skyd.db"
    db_mtime = db.stat().st_mtime_ns

    second = Daemon(d.state_dir, d.args, log_path=workdir / "second.log")
    second.spawn()
    try:
        code = second.proc.wait(20)
    finally:
        second.stop(signal.SIGKILL)
    out = second.log()
    assert code != 0, out
    # one clear line: who holds what
    assert str(d.state_dir) in out and f"pid {d.proc.pid}" in out, out
    assert "skyd.lock" in out, out
    for word in ("recovered", "shutting down", "stopped", "listening", "Traceback"):
        assert word not in out, out
    # nothing was re-run and nothing written: the first daemon goes on as before
    time.sleep(0.5)
    assert marker.read_text() == "run\n"
    assert "running it again" not in _request_log(d, rid)
    assert db.stat().st_mtime_ns == db_mtime
    assert d.request(rid).status is protocol.Status.RUNNING
    assert d.call(protocol.ApiInfo()).pid == d.proc.pid
    d.call(protocol.ApiCancel(request_ids=[rid]))
    assert d.wait_request(rid, 15).status is protocol.Status.CANCELLED
    # and once it is gone, the state dir is free again
    d.stop(signal.SIGTERM)
    d.start()


def test_workers_and_their_setup_die_with_the_daemon(make_daemon, workdir):
    d = make_daemon()
    marker = workdir / "started"
    d.submit_async(_launch("dies", f"echo started > {marker}; sleep 120", "true"))
    assert wait_until(marker.exists, 15)
    first = _first_run(d.proc.pid)
    assert any("sleep 120" in " ".join(p.cmdline()) for p in first)
    # no process the daemon started holds the state directory's lock file open
    lock = str(d.state_dir / "skyd.lock")
    for p in first:
        try:
            links = [os.readlink(fd.path) for fd in os.scandir(f"/proc/{p.pid}/fd")]
        except FileNotFoundError:
            continue                # gone meanwhile (a spare retired)
        assert lock not in links, p.cmdline()
    d.kill9()
    # the worker's group (setup included), the spares, the forkserver, the resource tracker
    assert wait_until(lambda: not _alive(first), 10), [p.cmdline() for p in _alive(first)]


def test_kill9_old_setup_is_gone_before_the_rerun_starts(make_daemon, workdir):
    d = make_daemon()
    count = workdir / "count"
    setup = f"for i in $(seq 1 40); do echo $i >> {count}; sleep 0.2; done"
    rid = d.submit_async(_launch("loop", setup, "true"))
    assert wait_until(lambda: len(_lines(count)) >= 3, 20)
    first = _first_run(d.proc.pid)
    d.kill9()
    d.start()
    assert not _alive(first), [p.cmdline() for p in _alive(first)]
    assert d.wait_request(rid, 60).status is protocol.Status.SUCCEEDED
    lines = _lines(count)
    # the first run's count stopped, then the re-run counted from 1 to 40: never two at once
    k = lines.index(1, 1)
    assert lines[:k] == list(range(1, k + 1)), lines
    assert lines[k:] == list(range(1, 41)), lines
    assert "running it again" in _request_log(d, rid)


def test_restart_kills_what_a_crashed_run_left_even_if_it_did_not_die(make_daemon, workdir):
    """Processes of the first run that could not die with it (frozen here) neither keep
    the new daemon from taking the state directory nor run beside the re-run."""
    d = make_daemon()
    marker = workdir / "runs"
    rid = d.submit_async(_launch("frozen", f"echo run >> {marker}; sleep 120", "true"))
    assert wait_until(marker.exists, 15)
    snapshot = _first_run(d.proc.pid)
    for p in snapshot:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.suspend()
    # Those stopped: one that was exiting (a zombie, or gone) as the snapshot was taken is not.
    first = _alive(snapshot)
    assert any("sleep 120" in " ".join(p.cmdline()) for p in first)
    try:
        d.kill9()
        time.sleep(0.5)
        assert len(_alive(first)) == len(first)     # still there, stopped
        d.start()
        assert not _alive(first), [p.cmdline() for p in _alive(first)]
    finally:
        for p in _alive(first):
            p.kill()
    assert wait_until(lambda: marker.read_text() == "run\nrun\n", 15)
    assert d.request(rid).status is protocol.Status.RUNNING
    d.call(protocol.ApiCancel(request_ids=[rid]))
    assert d.wait_request(rid, 15).status is protocol.Status.CANCELLED
