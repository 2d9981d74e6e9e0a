"""Resource faults: the disk under the state directory full (a small tmpfs), the database
locked by another process, a setup killed by the OOM killer, clients that stop reading a
followed log, 1,000 idle connections. Each gives a clear error or is shed, nothing accepted
is lost, everyone else keeps being served, and once the fault is gone the daemon recovers
without a restart. (A worker killed with -9: test_no_orphans.py.)"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from conftest import pid_alive, processes_mentioning, wait_until
from skyd import protocol
from skyd.taskspec import Task

SHORT_OPS = (protocol.ApiInfo(), protocol.ApiStatus(all_statuses=True), protocol.ClusterStatus(),
             protocol.JobsQueue())


def _launch(cluster: str, setup: str | None = None, run: str = "true") -> protocol.Launch:
    return protocol.Launch(task=Task(setup=setup, run=run), cluster=cluster)


def _served(d, within: float) -> float:
    """Every kind of short request answers, each within `within` seconds; the slowest."""
    worst = 0.0
    for op in SHORT_OPS:
        t = time.perf_counter()
        d.call(op)
        worst = max(worst, time.perf_counter() - t)
    assert worst < within, f"a short request took {worst:.3f}s"
    return worst


def _submit(d, op: protocol.Op) -> protocol.Accepted | protocol.Error:
    msgs = d.frames(op, wait=False)
    assert isinstance(msgs[-1], (protocol.Accepted, protocol.Error)), msgs
    return msgs[-1]


def _managed(d, job_id: int) -> protocol.ManagedJobRecord:
    return {j.job_id: j for j in d.call(protocol.JobsQueue(all_users=True))}[job_id]


def _managed_done(d, job_id: int) -> bool:
    j = _managed(d, job_id)
    return j.status in protocol.MANAGED_FINISHED and not j.teardown_pending


# ---- the disk full ---------------------------------------------------------------------

def _fill(path: Path) -> Path:
    filler = path / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    assert os.statvfs(path).f_bavail == 0
    return filler


def _daemon_on_a_small_disk(make_daemon, tmpfs, nodes_apart: bool = False):
    tmpfs("16m")
    if nodes_apart:
        tmpfs("64m", "state/clusters")
    d = make_daemon("--long-slots", "2")
    done = d.submit_async(_launch("before", run="echo before"))
    assert d.wait_request(done, 30).status is protocol.Status.SUCCEEDED
    return d, done


@pytest.fixture
def full_disk_daemon(make_daemon, tmpfs):
    """A daemon whose state directory is a 16 MiB tmpfs, and the request it finished first."""
    return _daemon_on_a_small_disk(make_daemon, tmpfs)


@pytest.fixture
def full_state_disk_daemon(make_daemon, tmpfs):
    """The same, with the local infra's nodes (sandboxes under <state>/clusters) on a disk of
    their own: what fills is the daemon's own state (its database, its logs). A node whose
    disk is full fails the task's files there, which is the task's failure, not the
    daemon's."""
    return _daemon_on_a_small_disk(make_daemon, tmpfs, nodes_apart=True)


@pytest.mark.timeout(60)
def test_disk_full_turns_new_work_away_serves_the_rest_and_recovers_without_restart(full_disk_daemon):
    d, done = full_disk_daemon
    filler = _fill(d.state_dir)
    answers = [_submit(d, _launch(f"full{i}")) for i in range(3)]
    answers.append(_submit(d, protocol.JobsLaunch(task=Task(run="true"))))
    refused = [a for a in answers if isinstance(a, protocol.Error)]
    assert len(refused) == len(answers), answers      # nothing can be made durable: refused
    assert all("full" in a.message for a in refused), refused
    _served(d, 0.5)
    assert d.request(done).status is protocol.Status.SUCCEEDED
    filler.unlink()
    after = d.submit_async(_launch("after", run="echo after"))
    assert d.wait_request(after, 30).status is protocol.Status.SUCCEEDED
    job = _submit(d, protocol.JobsLaunch(task=Task(run="true")))
    assert isinstance(job, protocol.Accepted) and job.job_id is not None
    assert wait_until(lambda: _managed_done(d, job.job_id), 30)
    assert _managed(d, job.job_id).status == "SUCCEEDED"
    assert d.call(protocol.ApiInfo()).pid == d.proc.pid      # the same daemon throughout


@pytest.mark.timeout(60)
def test_disk_full_is_a_clear_retryable_error(full_disk_daemon):
    d, _ = full_disk_daemon
    filler = _fill(d.state_dir)
    try:
        answer = _submit(d, _launch("full"))
        assert isinstance(answer, protocol.Error)
        assert answer.code in (protocol.ErrorCode.UNAVAILABLE, protocol.ErrorCode.BUSY), answer
        assert "bug" not in answer.hint, answer
        assert "full" in answer.message and str(d.state_dir) in answer.message, answer
        assert "failed inside the server" not in d.log(), d.log()   # nor a traceback
    finally:
        filler.unlink()


@pytest.mark.timeout(60)
def test_work_in_flight_when_the_disk_fills_finishes_once_it_is_freed(full_state_disk_daemon,
                                                                     workdir):
    """Their outcomes (and every step between) wait for the database to take them again:
    neither stays RUNNING, nor is judged failed for a write that could not be made."""
    d, _ = full_state_disk_daemon
    go = workdir / "go"
    wait_go = f"while [ ! -e {go} ]; do sleep 0.05; done"
    rid = d.submit_async(_launch("inflight", setup=wait_go, run="echo ran"))
    job = _submit(d, protocol.JobsLaunch(task=Task(setup=wait_go, run="echo ran")))
    assert isinstance(job, protocol.Accepted)
    assert wait_until(lambda: d.request(rid).status is protocol.Status.RUNNING, 15)
    filler = _fill(d.state_dir)
    go.touch()                                # both finish their setup on a full disk
    time.sleep(2)
    filler.unlink()
    assert d.wait_request(rid, 5).status is protocol.Status.SUCCEEDED
    assert wait_until(lambda: _managed_done(d, job.job_id), 15)
    assert _managed(d, job.job_id).status == "SUCCEEDED"


# ---- the database locked by another process -----------------------------------------------

def _lock_db(d, seconds: float) -> subprocess.Popen:
    """Another process holds an exclusive lock on the daemon's database for `seconds`."""
    code = ("import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "print('locked', flush=True)\n"
            "time.sleep(float(sys.argv[2]))\n"
            "db.execute('ROLLBACK')\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(d.state_dir / "skyd.db"), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _submit_in_threads(d, ops: list[protocol.Op]) -> tuple[list[threading.Thread], dict]:
    answers: dict = {}

    def go(i: int, op: protocol.Op) -> None:
        t = time.perf_counter()
        answers[i] = (_submit(d, op), time.perf_counter() - t)
    threads = [threading.Thread(target=go, args=(i, op)) for i, op in enumerate(ops)]
    for t in threads:
        t.start()
    return threads, answers


@pytest.mark.timeout(60)
def test_a_database_locked_for_a_while_delays_submissions_and_serves_the_rest(make_daemon, workdir):
    d = make_daemon("--long-slots", "2")
    go = workdir / "go"
    running = d.submit_async(_launch("running", setup=f"while [ ! -e {go} ]; do sleep 0.05; done"))
    assert wait_until(lambda: d.request(running).status is protocol.Status.RUNNING, 15)
    locker = _lock_db(d, 3)
    go.touch()                              # it finishes while the database is locked
    threads, answers = _submit_in_threads(d, [_launch(f"l{i}") for i in range(3)] +
                                          [protocol.JobsLaunch(task=Task(run="true"))])
    _served(d, 0.5)                         # listings and info do not wait for the lock
    locker.wait(10)
    for t in threads:
        t.join(20)
    assert all(isinstance(a, protocol.Accepted) for a, _ in answers.values()), answers
    for a, _ in answers.values():
        if a.job_id is None:
            assert d.wait_request(a.request_id, 30).status is protocol.Status.SUCCEEDED
        else:
            assert wait_until(lambda: _managed_done(d, a.job_id), 30)
    assert d.wait_request(running, 10).status is protocol.Status.SUCCEEDED


@pytest.mark.timeout(60)
def test_a_database_locked_past_the_busy_timeout_is_a_clear_error_and_loses_nothing(
        make_daemon, workdir):
    d = make_daemon("--long-slots", "2")
    go = workdir / "go"
    running = d.submit_async(_launch("running", setup=f"while [ ! -e {go} ]; do sleep 0.05; done"))
    assert wait_until(lambda: d.request(running).status is protocol.Status.RUNNING, 15)
    locker = _lock_db(d, 11)
    go.touch()
    threads, answers = _submit_in_threads(d, [_launch(f"l{i}") for i in range(2)])
    _served(d, 0.5)
    locker.wait(20)
    for t in threads:
        t.join(20)
    for a, _ in answers.values():
        assert isinstance(a, protocol.Accepted) or (
            a.code in (protocol.ErrorCode.BUSY, protocol.ErrorCode.UNAVAILABLE)
            and "lock" in a.message), a
    assert d.wait_request(running, 8).status is protocol.Status.SUCCEEDED


@pytest.mark.timeout(60)
def test_an_ended_request_reads_as_ended_only_once_that_is_durable(make_daemon, workdir):
    """The outcome is published after its row is committed. A running launch cancelled
    while the database is locked has its worker stopped at once, yet reads RUNNING, to a
    client and in the database, until the commit; a kill -9 in that window leaves the two
    agreeing, and the restart's rules apply to it."""
    d = make_daemon("--long-slots", "2")
    go = workdir / "go"
    rid = d.submit_async(_launch("held", setup=f"while [ ! -e {go} ]; do sleep 0.05; done"))
    assert wait_until(lambda: processes_mentioning(go), 15)
    locker = _lock_db(d, 30)
    acked: list = []

    def cancel() -> None:
        with contextlib.suppress(ConnectionError):     # the daemon is killed before it answers
            acked.append(d.call(protocol.ApiCancel(request_ids=[rid])))
    try:
        threading.Thread(target=cancel, daemon=True).start()
        assert wait_until(lambda: not processes_mentioning(go), 15), "the cancel did not stop the setup"
        seen = {d.request(rid).status for _ in range(20) if time.sleep(0.05) is None}
        assert seen == {protocol.Status.RUNNING}, seen
        assert not acked, acked             # a cancel is acknowledged once it is durable
        d.stop(signal.SIGKILL)
    finally:
        locker.kill()
        locker.wait(10)
    assert _stored_status(d, rid) == protocol.Status.RUNNING.value    # as the client was told
    go.touch()
    d.start()
    assert d.wait_request(rid, 30).status in (protocol.Status.SUCCEEDED, protocol.Status.FAILED)


def _stored_status(d, rid: str) -> str:
    with contextlib.closing(sqlite3.connect(d.state_dir / "skyd.db")) as db:
        return db.execute("SELECT status FROM requests WHERE id = ?", (rid,)).fetchone()[0]


# ---- a setup killed by the OOM killer -----------------------------------------------------

@pytest.fixture
def memory_cgroup():
    """A memory cgroup limited to 64 MiB (v1 or v2), removed after the test."""
    base = Path("/sys/fs/cgroup/memory") if Path("/sys/fs/cgroup/memory").is_dir() else \
        Path("/sys/fs/cgroup")
    cg = base / f"skyd-reliability-{os.getpid()}"
    try:
        cg.mkdir()
        limit = "memory.limit_in_bytes" if (cg / "memory.limit_in_bytes").exists() else "memory.max"
        (cg / limit).write_text(str(64 << 20))
    except OSError as e:
        pytest.skip(f"no memory cgroup can be made here: {e}")
    yield cg
    for _ in range(50):
        try:
            cg.rmdir()
            break
        except OSError:
            time.sleep(0.1)           # its last process is still exiting


@pytest.mark.timeout(60)
def test_a_setup_killed_by_the_oom_killer_fails_its_request_alone(make_daemon, memory_cgroup):
    d = make_daemon("--long-slots", "2")
    keep = d.submit_async(_launch("neighbour", setup="sleep 1", run="echo fine"))
    hog = f"echo $$ > {memory_cgroup}/cgroup.procs; python3 -c 'a = bytearray(512 << 20)'"
    rid = d.submit_async(_launch("hog", setup=hog))
    rec = d.wait_request(rid, 30)
    assert rec.status is protocol.Status.FAILED and "setup failed" in rec.error, rec
    assert "9" in rec.error, rec          # it names the signal that ended it
    _served(d, 0.5)
    assert d.wait_request(keep, 30).status is protocol.Status.SUCCEEDED
    again = d.submit_async(_launch("hog", setup="true", run="echo recovered"))
    assert d.wait_request(again, 30).status is protocol.Status.SUCCEEDED


# ---- clients that stop reading ----------------------------------------------------------------

def _stalled_follower(d, op: protocol.Op) -> socket.socket:
    """A client that asks to follow a log and never reads a byte of it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(str(d.socket))
    protocol.send_msg(s, protocol.Hello(protocol.PROTOCOL_VERSION, "stalled"))
    welcome = msgspec.msgpack.decode(protocol.recv_frame(s), type=protocol.ServerMsg)
    assert isinstance(welcome, protocol.Welcome), welcome
    protocol.send_msg(s, protocol.Submit(op))
    return s


def _flood(megabytes: int) -> str:
    """A command that prints that many MB of 100-byte lines, as fast as it can."""
    return f"head -c {megabytes}000000 /dev/zero | tr '\\0' x | fold -w 100"


@pytest.mark.timeout(60)
def test_followers_that_stop_reading_cost_bounded_memory_and_slow_no_one(make_daemon):
    d = make_daemon("--long-slots", "2")
    rid = d.submit_async(_launch("flood", setup=_flood(20), run=_flood(30)))
    assert wait_until(lambda: d.request(rid).status is protocol.Status.RUNNING, 15)
    daemon = psutil.Process(d.proc.pid)
    rss0 = daemon.memory_info().rss
    stalled = [_stalled_follower(d, protocol.ApiLogs(request_id=rid, follow=True)) for _ in range(3)]
    assert d.wait_request(rid, 30).status is protocol.Status.SUCCEEDED
    stalled += [_stalled_follower(d, protocol.JobLogs(cluster="flood", job_id=1, follow=True))
                for _ in range(3)]
    worst, peak = 0.0, 0
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        worst = max(worst, _served(d, 0.5))
        peak = max(peak, daemon.memory_info().rss)
        time.sleep(0.2)
    assert wait_until(lambda: d.call(protocol.JobQueue(cluster="flood"))[0].status == "SUCCEEDED", 30)
    assert peak - rss0 < 64 << 20, f"the daemon grew by {(peak - rss0) >> 20} MiB"
    fds = daemon.num_fds()
    for s in stalled:
        s.close()
    assert wait_until(lambda: daemon.num_fds() <= fds - len(stalled), 10)
    # a reader that does read gets the job's whole output
    out = d.skyctl("logs", "flood", "1", "--no-follow", timeout=60)
    assert out.returncode == 0 and len(out.stdout) > 30_000_000


@pytest.mark.timeout(60)
def test_a_thousand_idle_connections_are_shed_or_held_and_everyone_else_is_served(make_daemon):
    d = make_daemon("--handshake-timeout", "2")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1200:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    daemon = psutil.Process(d.proc.pid)
    base = daemon.num_fds()
    idle = []
    try:
        for i in range(1000):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(d.socket))
            if i % 2:             # half said hello and went quiet, half never said anything
                protocol.send_msg(s, protocol.Hello(protocol.PROTOCOL_VERSION, "idle"))
            idle.append(s)
        _served(d, 1.0)
        rid = d.submit_async(_launch("busy-day", run="echo served"))
        assert d.wait_request(rid, 30).status is protocol.Status.SUCCEEDED
        # the silent ones are shed at the handshake timeout; those that said hello are held
        assert wait_until(lambda: daemon.num_fds() < base + 600, 10), daemon.num_fds()
        assert daemon.num_fds() > base + 400
    finally:
        for s in idle:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert wait_until(lambda: daemon.num_fds() <= base + 5, 10), (daemon.num_fds(), base)
    _served(d, 0.5)


# ---- the forkserver killed ----------------------------------------------------------------------

def _forkservers(daemon: psutil.Process) -> list[psutil.Process]:
    found = []
    for p in daemon.children():
        try:
            if "multiprocessing.forkserver" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:        # gone, or a zombie not reaped yet (a finished job runner)
            pass
    return found


@pytest.mark.timeout(60)
def test_long_requests_run_again_after_the_forkserver_is_killed(make_daemon):
    """Its spares die with it: none is handed out, a new forkserver is started (and recorded
    for the next start's reaping), and every request runs, none stays RUNNING."""
    d = make_daemon("--long-slots", "2")
    daemon = psutil.Process(d.proc.pid)
    assert d.wait_request(d.submit_async(_launch("first")), 30).status is protocol.Status.SUCCEEDED
    forkserver = _forkservers(daemon)
    assert len(forkserver) == 1
    forkserver[0].kill()
    assert wait_until(lambda: not pid_alive(forkserver[0].pid), 10)
    _served(d, 0.5)
    rids = [d.submit_async(_launch(f"after{i}", run="echo after")) for i in range(3)]
    for rid in rids:
        assert d.wait_request(rid, 5).status is protocol.Status.SUCCEEDED
    again = _forkservers(daemon)
    assert len(again) == 1 and again[0].pid != forkserver[0].pid
    recorded = (d.state_dir / "workers" / "forkserver").read_text().split()[0]
    assert int(recorded) == again[0].pid


@pytest.mark.timeout(60)
def test_a_request_whose_worker_is_dead_on_delivery_goes_to_a_fresh_one(make_daemon):
    """Spares that died before the daemon saw them exit (their forkserver, stopped, has not
    reaped them: nothing tells the daemon yet) are each tried, found dead, and replaced;
    the request runs on a fresh worker once the forkserver can start one."""
    d = make_daemon("--long-slots", "2", "--spares", "2")
    daemon = psutil.Process(d.proc.pid)
    assert d.wait_request(d.submit_async(_launch("first")), 30).status is protocol.Status.SUCCEEDED
    [forkserver] = _forkservers(daemon)
    assert wait_until(lambda: len(forkserver.children()) == 2, 10)     # the two spares
    spares = forkserver.children()
    forkserver.suspend()
    try:
        for p in spares:
            p.kill()
        assert wait_until(lambda: all(p.status() == psutil.STATUS_ZOMBIE for p in spares), 10)
        rid = d.submit_async(_launch("fresh", run="echo fresh"))
        assert wait_until(lambda: d.log().count("died before it took request " + rid) == 2, 10)
    finally:
        forkserver.resume()
    assert d.wait_request(rid, 15).status is protocol.Status.SUCCEEDED
