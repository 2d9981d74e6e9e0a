"""Nothing accepted is lost: restarts with pending and running requests, jobs that outlive
the daemon, a client that keeps following across a restart, retention."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

from conftest import wait_until, write_task
from skyd import protocol
from skyd.requests.scheduler import INTERRUPTED
from skyd.taskspec import Task


def _launch(cluster: str, setup: str, run: str | None = None) -> protocol.Launch:
    return protocol.Launch(task=Task(setup=setup, run=run), cluster=cluster)


def _rows(state_dir) -> list[tuple]:
    with sqlite3.connect(state_dir / "skyd.db") as db:
        return db.execute("SELECT id, name, status FROM requests ORDER BY seq").fetchall()


def test_accepted_requests_are_on_disk_before_accepted(make_daemon):
    d = make_daemon("--long-slots", "1")
    ids = [d.submit_async(_launch(f"d{i}", "sleep 5")) for i in range(20)]
    d.kill9()                       # no chance to flush anything after "accepted"
    stored = [r[0] for r in _rows(d.state_dir)]
    assert stored == ids


def test_restart_requeues_pending_in_order_and_handles_running(make_daemon, workdir):
    import psutil
    d = make_daemon("--long-slots", "2")
    order = workdir / "order"
    d.skyctl("launch", "-c", "base", "true", check=True)
    # RUNNING at the kill: an idempotent launch in its setup, and a non-idempotent exec;
    # then pending launches behind them.
    rerun = workdir / "rerun"               # its second run need not wait
    slow_launch = d.submit_async(_launch(
        "slow", f"echo slow >> {order}; [ -e {rerun} ] || sleep 30", "true"))
    assert wait_until(lambda: order.exists() and order.read_text() == "slow\n", 10)
    # Freeze the forkserver, then the idle workers (not the launch's, busy with its setup):
    # the exec is RUNNING (recorded before a worker gets it) and stays so until the kill.
    def cmdline(p: psutil.Process) -> str:
        try:
            return " ".join(p.cmdline())
        except psutil.Error:            # gone, or a zombie
            return ""
    forkservers = [p for p in psutil.Process(d.proc.pid).children(recursive=True)
                   if "forkserver" in cmdline(p)]
    assert forkservers
    frozen = []
    for proc in forkservers:
        proc.suspend()
        frozen.append(proc.pid)
    for proc in forkservers:
        for worker in proc.children():
            if not worker.children():
                worker.suspend()
                frozen.append(worker.pid)
    try:
        running_exec = d.submit_async(protocol.Exec(task=Task(run="echo exec-ran"),
                                                    cluster="base"))
        assert wait_until(lambda: d.request(running_exec).status is protocol.Status.RUNNING)
        pending = [d.submit_async(_launch(f"p{i}", f"echo p{i} >> {order}", "true"))
                   for i in range(4)]
        assert [d.request(r).status for r in (slow_launch, *pending)] == \
            [protocol.Status.RUNNING] + [protocol.Status.PENDING] * 4
        d.stop(signal.SIGKILL)
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    rerun.touch()
    d.start(["--long-slots", "1"])          # one at a time: the order is observable
    deadline = time.monotonic() + 60        # for all five together (~2 s here)
    recs = [d.wait_request(rid, max(1.0, deadline - time.monotonic()))
            for rid in [slow_launch, *pending]]
    assert all(r.status is protocol.Status.SUCCEEDED for r in recs), recs
    # the interrupted idempotent launch ran again, then the pending ones in their order
    assert order.read_text().split() == ["slow", "slow", "p0", "p1", "p2", "p3"]
    # the interrupted non-idempotent exec was not run again: it failed, saying why
    rec = d.request(running_exec)
    assert (rec.status, rec.error) == (protocol.Status.FAILED, INTERRUPTED)
    assert [j.status for j in d.call(protocol.JobQueue(cluster="base"))] == ["FAILED",
                                                                             "SUCCEEDED"]


def _descendants(pid: int) -> list[int]:
    import psutil
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def test_running_non_idempotent_request_fails_as_interrupted(make_daemon, workdir):
    d = make_daemon()
    d.skyctl("launch", "-c", "base", "true", check=True)
    # Freeze the idle workers: the next exec is RUNNING (recorded before its worker gets
    # it) and stays so, deterministically, until the daemon dies under it.
    workers = _descendants(d.proc.pid)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        rid = d.submit_async(protocol.Exec(task=Task(run="true"), cluster="base"))
        assert wait_until(lambda: d.request(rid).status is protocol.Status.RUNNING, 10)
        d.stop(signal.SIGKILL)
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    d.start()
    rec = d.request(rid)
    assert rec.status is protocol.Status.FAILED
    assert rec.error == INTERRUPTED
    # its job never started, so it is not left pending forever
    jobs = {j.job_id: j.status for j in d.call(protocol.JobQueue(cluster="base"))}
    assert jobs[2] == "FAILED"


def test_graceful_stop_leaves_no_process_behind(make_daemon, workdir):
    d = make_daemon("--drain-timeout", "0")
    rid = d.submit_async(_launch("g1", "sleep 301.5", "true"))
    assert wait_until(lambda: d.request(rid).status is protocol.Status.RUNNING, 10)
    pid = d.proc.pid
    assert d.stop(signal.SIGTERM) == 0
    # the daemon's own children (forkserver, workers, setup) are all gone
    def children() -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                             text=True).stdout.split()
        return out
    assert wait_until(lambda: not children(), 5)
    leftovers = subprocess.run(["pgrep", "-f", "sleep 301.5"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""
    # after the restart, the idempotent launch runs again
    d.start(["--drain-timeout", "0"])
    assert wait_until(lambda: d.request(rid).status is protocol.Status.RUNNING, 10)
    d.call(protocol.ApiCancel(request_ids=[rid]))


def test_sigterm_lets_running_requests_finish_within_the_drain_timeout(make_daemon, workdir):
    done = workdir / "drained"
    d = make_daemon("--drain-timeout", "20")
    rid = d.submit_async(_launch("dr", f"sleep 2; echo ok > {done}", "true"))
    assert wait_until(lambda: d.request(rid).status is protocol.Status.RUNNING, 10)
    # SIGTERM: the running launch may finish (2 s of setup, 20 s allowed) before the exit.
    assert d.stop(signal.SIGTERM) == 0
    assert done.read_text() == "ok\n"
    assert _rows(d.state_dir) == [(rid, "launch", "succeeded")]
    # With a short drain timeout, SIGTERM cuts it: its row says it still ran (the next
    # start re-runs it), and nothing after the cut ran.
    done.unlink()
    d.start(["--drain-timeout", "0.5"])
    rid2 = d.submit_async(_launch("dr2", f"sleep 3; echo ok > {done}", "true"))
    started = time.monotonic()
    assert wait_until(lambda: d.request(rid2).status is protocol.Status.RUNNING, 10)
    assert d.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 2.5
    assert (rid2, "launch", "running") in _rows(d.state_dir)
    time.sleep(max(0.0, started + 3.5 - time.monotonic()))
    assert not done.exists()


def test_jobs_survive_restart_and_finish_while_daemon_is_down(make_daemon, workdir):
    d = make_daemon()
    d.skyctl("launch", "-c", "j1", "-d", "sleep 1.5; echo finished", check=True)
    d.skyctl("launch", "-c", "j2", "-d", "sleep 1.5; exit 4", check=True)
    d.stop(signal.SIGKILL)
    time.sleep(2.5)              # both jobs end while no daemon runs
    d.start()
    j1, j2 = d.wait_job("j1", 1, 5), d.wait_job("j2", 1, 5)
    assert (j1.status, j1.exit_code) == ("SUCCEEDED", 0)
    assert (j2.status, j2.exit_code) == ("FAILED", 4)
    assert d.skyctl("logs", "j1", "--no-follow").stdout == "finished\n"


def test_job_running_across_restart_is_watched_again(make_daemon):
    d = make_daemon()
    d.skyctl("launch", "-c", "w1", "-d", "sleep 2; echo late", check=True)
    d.restart()
    assert d.call(protocol.JobQueue(cluster="w1"))[0].status == "RUNNING"
    job = d.wait_job("w1", 1, 10)
    assert job.status == "SUCCEEDED"


def test_client_keeps_following_across_restart(make_daemon, workdir):
    d = make_daemon("--drain-timeout", "0")
    task = write_task(workdir, "t.yaml", "setup: echo before; sleep 2; echo after-setup\n"
                                         "run: echo job-output\n")
    env = dict(os.environ, SKYD_HOST=d.host, NO_COLOR="1")
    client = subprocess.Popen([sys.executable, "-m", "skyctl", "launch", "-c", "fol", str(task)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert wait_until(lambda: any(r.name == "launch" and r.status is protocol.Status.RUNNING
                                  for r in d.call(protocol.ApiStatus())), 10)
    d.restart(["--drain-timeout", "0"])
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert "reconnecting" in err.lower()
    assert "job-output" in out
    assert "after-setup" in out


def test_following_a_jobs_output_goes_on_across_a_restart(make_daemon):
    d = make_daemon("--drain-timeout", "0")
    d.skyctl("launch", "-c", "jf", "-d",
             "for i in 1 2 3 4 5 6 7 8; do echo line-$i; sleep 0.5; done", check=True)
    env = dict(os.environ, SKYD_HOST=d.host, NO_COLOR="1")
    follower = subprocess.Popen([sys.executable, "-m", "skyctl", "logs", "jf", "1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = follower.stdout.readline()
        d.restart(["--drain-timeout", "0"])
        # The job runs on while the daemon restarts; the follower reconnects and resumes
        # at the byte it had reached: every line once, none lost, none repeated.
        assert d.call(protocol.JobQueue(cluster="jf"))[0].status == "RUNNING"
        rest, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert "reconnecting" in err.lower()
    assert first + rest == "".join(f"line-{i}\n" for i in range(1, 9))


def test_the_retention_pass_runs_again_every_interval(workdir):
    """Retention is checked hourly, not only at start: a real daemon whose interval is
    shortened (GC_INTERVAL, 3600 s, set to 0.5 s before it starts) removes a request
    that finished after it started once the retention period has passed."""
    from conftest import Daemon, kill_leftovers
    from skyd.server import housekeeping
    assert housekeeping.GC_INTERVAL == 3600.0

    class ShortInterval(Daemon):
        def command(self, extra=None):
            cmd = super().command(extra)
            assert cmd[1:4] == ["-m", "skyd", "serve"]
            code = ("import sys, skyd.server.housekeeping as h; h.GC_INTERVAL = 0.5; "
                    "from skyd.server.cli import main; sys.exit(main())")
            return [cmd[0], "-c", code, *cmd[3:]]

    d = ShortInterval(workdir / "state", ["--skip-resources-check", "--retention-hours",
                                          "0.001"])        # 3.6 s
    try:
        d.start()
        rid = d.submit_async(_launch("r2", "true"))
        finished = d.wait_request(rid).finished_at
        log = d.state_dir / "logs" / "requests" / f"{rid}.log"
        assert log.exists() and rid in [r[0] for r in _rows(d.state_dir)]
        assert wait_until(lambda: not log.exists(), 10)
        assert time.time() >= finished + 3.6 - 0.1        # not before its time
        assert rid not in [r[0] for r in _rows(d.state_dir)]
    finally:
        d.stop()
        kill_leftovers(d.state_dir)


def test_retention_removes_old_finished_requests_and_logs(make_daemon):
    d = make_daemon()
    rid = d.submit_async(_launch("r1", "true"))
    d.wait_request(rid)
    log = d.state_dir / "logs" / "requests" / f"{rid}.log"
    assert log.exists()
    d.restart(["--retention-hours", "0"])
    assert wait_until(lambda: not log.exists(), 5)
    assert rid not in [r[0] for r in _rows(d.state_dir)]
    assert d.skyctl("api", "status", rid).returncode == 2   # not found
