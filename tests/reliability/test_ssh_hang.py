"""An ssh host that hangs mid-command: its sshd and everything it started are stopped
(SIGSTOP, by pid: only the processes of that test host), so connections to it stay open and
nothing answers, as when a machine freezes or its network drops packets. Its detached jobs
go on. Whatever was in flight there ends within a bounded time naming the host, or waits
saying why; everyone else is served meanwhile; nothing accepted is lost; once the host
answers again (SIGCONT) the daemon recovers by itself, without a restart."""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from conftest import wait_until
from sshd import SshHost, ssh_hosts  # noqa: F401 - the fixture
from skyd import protocol
from skyd.taskspec import Resources, Task

# ssh notices a silent server within ServerAliveInterval x CountMax (15 s) plus, for a new
# connection, ConnectTimeout (10 s): each in-flight command must end well within this.
BOUND = 60.0
PROMPT = 1.0            # seconds a short request may take meanwhile (a loaded 2-core box)


class Hang:
    """The host's sshd and its sessions (the commands run over them) stopped, by pid;
    `resume()` (or leaving the block) lets them go on."""

    def __init__(self, host: SshHost):
        assert host.proc is not None
        self.root = psutil.Process(host.proc.pid)
        self.stopped: list[psutil.Process] = []

    def __enter__(self) -> "Hang":
        # The listener first, so that no new session starts; then its sessions, until
        # none is left running (one may have been forking as the listener stopped).
        todo = [self.root]
        while todo:
            for p in todo:
                try:
                    p.suspend()
                except psutil.NoSuchProcess:
                    pass                # a session that was ending
                self.stopped.append(p)
            time.sleep(0.05)
            todo = [c for c in self.root.children(recursive=True) if c not in self.stopped]
        return self

    def resume(self) -> None:
        for p in self.stopped:
            try:
                p.resume()
            except psutil.NoSuchProcess:
                pass
        self.stopped.clear()

    def __exit__(self, *exc) -> None:
        self.resume()


class Follower(threading.Thread):
    """A client reading a job's output (following it, or what is there): every frame,
    with when it came."""

    def __init__(self, d, cluster: str, job_id: int, follow: bool = True):
        super().__init__(daemon=True)
        self.conn = d.connect(timeout=None)
        self.op = protocol.JobLogs(cluster=cluster, job_id=job_id, follow=follow)
        self.frames: list[tuple[float, object]] = []
        self.start()

    def run(self) -> None:
        try:
            for msg in self.conn.submit(self.op):
                self.frames.append((time.monotonic(), msg))
        except OSError:
            pass

    def text(self, since: float = 0.0) -> str:
        return b"".join(m.data for t, m in list(self.frames)
                        if t >= since and isinstance(m, protocol.Chunk)).decode()

    def notices(self) -> list[str]:
        return [m.message for _, m in list(self.frames) if isinstance(m, protocol.Notice)]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def pooled(make_daemon, ssh_hosts, workdir):  # noqa: F811
    pools = workdir / "pools.yaml"
    pools.write_text(ssh_hosts.pool_yaml("p", shared_login=True))
    d = make_daemon("--node-pools", str(pools), "--ssh-known-hosts", str(ssh_hosts.known_hosts))
    d.hosts = ssh_hosts
    return d


def _cluster(d, name: str) -> protocol.ClusterRecord:
    return {c.name: c for c in d.call(protocol.ClusterStatus())}[name]


def _host_of(d, name: str) -> SshHost:
    [node] = _cluster(d, name).nodes
    [host] = [h for h in d.hosts if h.ip == node.ip]
    return host


def _job(d, cluster: str, job_id: int) -> protocol.JobRecord:
    return {j.job_id: j for j in d.call(protocol.JobQueue(cluster=cluster))}[job_id]


def _until(d, pred, timeout: float, what: str) -> None:
    if not wait_until(pred, timeout, 0.1):
        raise AssertionError(f"not within {timeout:g}s: {what}\ndaemon log:\n{d.log()[-3000:]}")


def _served(d, cluster: str) -> float:
    """Status, the request listing and a job queue answer promptly: the slowest of them."""
    worst = 0.0
    for op in (protocol.ClusterStatus(), protocol.ApiStatus(all_statuses=True),
               protocol.JobQueue(cluster=cluster)):
        t = time.perf_counter()
        d.call(op)
        worst = max(worst, time.perf_counter() - t)
    assert worst < PROMPT, f"a short request took {worst:.2f}s while a host hangs"
    return worst


def _local_launch(d, name: str) -> str:
    """Another user's work meanwhile: a launch on the local infra, which must finish."""
    rid = d.submit_async(protocol.Launch(task=Task(run=f"echo {name}"), cluster=name))
    assert d.wait_request(rid, 60).status is protocol.Status.SUCCEEDED
    return rid


def _all_known(d, expected: dict[str, protocol.Status]) -> None:
    """Nothing accepted was lost: each request is known and ended as it should have."""
    recs = {r.id: r.status for r in d.call(protocol.ApiStatus(request_ids=list(expected)))}
    assert recs == expected


@pytest.mark.timeout(300)
def test_a_host_hanging_mid_exec_and_follow(pooled):
    """(a) an exec whose worker is writing its job on the host fails naming it, within ssh's
    bounds; (b) a follower of a job there is told and waits, then gets the output that
    came meanwhile; the job's watch marks the cluster UNHEALTHY saying which host. Once the
    host answers: UP again, the job still running, a new exec runs; no restart."""
    d = pooled
    ticks = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done"
    task = Task(run=f"echo started; {ticks}", resources=Resources(infra="ssh/p"))
    launched = d.submit_async(protocol.Launch(task=task, cluster="h"))
    assert d.wait_request(launched, 90).status is protocol.Status.SUCCEEDED
    _until(d, lambda: _job(d, "h", 1).status == "RUNNING", 30, "job 1 running")
    host = _host_of(d, "h")
    where = f"{host.ip}:{host.port}"
    follower, reader = Follower(d, "h", 1), None
    try:
        _until(d, lambda: "tick" in follower.text(), 30, "the follower gets output")
        with Hang(host) as hang:
            t0 = time.monotonic()
            ex = d.submit_async(protocol.Exec(task=Task(run="echo never"), cluster="h"))
            reader = Follower(d, "h", 1, follow=False)      # `logs --no-follow`
            worst = _served(d, "h")
            local = _local_launch(d, "loc")
            rec = d.wait_request(ex, BOUND)
            failed_after = time.monotonic() - t0
            assert rec.status is protocol.Status.FAILED, rec
            assert f"cannot reach node 0 ({host.user}@{where})" in (rec.error or ""), rec.error
            reader.join(BOUND)
            assert isinstance(reader.frames[-1][1], protocol.Result), reader.frames
            assert any(where in n and "output is missing" in n for n in reader.notices())
            _until(d, lambda: any(where in n and "does not answer" in n
                                  for n in follower.notices()), BOUND, f"a notice {follower.frames}")
            _until(d, lambda: _cluster(d, "h").status == "UNHEALTHY", BOUND, "UNHEALTHY")
            assert where in _cluster(d, "h").status_reason
            assert not any(isinstance(m, protocol.Result) for _, m in follower.frames)
            worst = max(worst, _served(d, "h"))
            hang.resume()
            resumed = time.monotonic()
        _until(d, lambda: _cluster(d, "h").status == "UP", BOUND, "UP again")
        up_after = time.monotonic() - resumed
        assert _job(d, "h", 1).status == "RUNNING"
        _until(d, lambda: "tick" in follower.text(since=resumed), BOUND, "the output again")
        assert any("answers again" in n for n in follower.notices()), follower.notices()
        seen = [int(w) for w in follower.text().split() if w.isdigit()]
        assert seen == list(range(1, len(seen) + 1)), "the follower missed output"
        p = d.skyctl("exec", "-c", "h", "echo back-again", timeout=BOUND)
        assert p.returncode == 0 and "back-again" in p.stdout, p.stdout + p.stderr
        print(f"exec failed after {failed_after:.1f}s; UP {up_after:.1f}s after; slowest short request "
              f"{worst * 1000:.0f} ms; {len(seen)} ticks, none missed; told: "
              f"{follower.notices() + reader.notices()}")
    finally:
        follower.close()
        if reader is not None:
            reader.close()
    _all_known(d, {launched: protocol.Status.SUCCEEDED, ex: protocol.Status.FAILED,
                   local: protocol.Status.SUCCEEDED})
    d.call(protocol.CancelJobs(cluster="h", all=True))
    assert d.wait_job("h", 1, 30).status == "CANCELLED"


@pytest.mark.timeout(300)
def test_a_host_hanging_as_the_daemon_starts_and_probes_it(pooled):
    """(c) The daemon (re)started while a host hangs probes its nodes: it serves at once,
    the probe ends within its timeout marking the cluster UNHEALTHY naming the host, and
    autostop waits for it; once the host answers, the cluster is UP again by itself
    (nodes that did not answer are probed again every few seconds), then autostops."""
    d = pooled
    launched = d.submit_async(protocol.Launch(task=Task(run="true", resources=Resources(
        infra="ssh/p")), cluster="idle"))
    assert d.wait_request(launched, 90).status is protocol.Status.SUCCEEDED
    host = _host_of(d, "idle")
    where = f"{host.ip}:{host.port}"
    with Hang(host) as hang:
        t0 = time.monotonic()
        d.restart()
        restarted = time.monotonic() - t0
        worst = _served(d, "idle")
        local = _local_launch(d, "loc")
        _until(d, lambda: _cluster(d, "idle").status == "UNHEALTHY", BOUND, "UNHEALTHY")
        probed_after = time.monotonic() - t0
        assert where in _cluster(d, "idle").status_reason
        d.call(protocol.Autostop(cluster="idle", idle_minutes=0))
        worst = max(worst, _served(d, "idle"))
        time.sleep(2)                   # autostop waits for an unhealthy cluster
        assert _cluster(d, "idle").status == "UNHEALTHY"
        hang.resume()
        resumed = time.monotonic()
    _until(d, lambda: _cluster(d, "idle").status != "UNHEALTHY", BOUND, "UP again")
    up_after = time.monotonic() - resumed
    _until(d, lambda: _cluster(d, "idle").status == "STOPPED", 30, "autostopped")
    stops = [r for r in d.call(protocol.ApiStatus(all_statuses=True)) if r.name == "stop"]
    assert len(stops) == 1, stops       # the cluster is STOPPED a moment before its request ends
    assert d.wait_request(stops[0].id, 30).status is protocol.Status.SUCCEEDED
    d.call(protocol.Autostop(cluster="idle", idle_minutes=-1))
    p = d.skyctl("start", "idle", timeout=BOUND)
    assert p.returncode == 0, p.stdout + p.stderr
    p = d.skyctl("exec", "-c", "idle", "echo back-again", timeout=BOUND)
    assert p.returncode == 0 and "back-again" in p.stdout, p.stdout + p.stderr
    print(f"restart took {restarted:.1f}s, UNHEALTHY after {probed_after:.1f}s, UP {up_after:.1f}s "
          f"after; slowest short request {worst * 1000:.0f} ms")
    _all_known(d, {launched: protocol.Status.SUCCEEDED, local: protocol.Status.SUCCEEDED,
                   stops[0].id: protocol.Status.SUCCEEDED})
