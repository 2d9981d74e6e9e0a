"""Identity comes from SO_PEERCRED: people see and control their own things, and a job
never runs with more privilege than the person who asked for it.

The tests run as root (the daemon's owner, so an admin). The other person is `nobody`
(uid/gid 65534), who runs the real skyctl as a subprocess against a daemon whose socket
is 0660 for the group `nogroup`."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, pid_alive, wait_until, write_task
from skyd import protocol
from skyd.protocol import Status
from skyd.taskspec import Task

NOBODY = (65534, 65534)
GROUP = "nogroup"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


# ---- running the real skyctl as nobody ---------------------------------------------------------

def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY[1])
    os.setuid(NOBODY[0])


def _client_env(pythonpath: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SKYD_HOST", None)
    env["NO_COLOR"] = "1"
    env["HOME"] = "/tmp"
    env["PYTHONPATH"] = pythonpath
    return env


def _probe(python: str, pythonpath: str) -> str | None:
    """None when nobody can run skyctl with this interpreter, else why not."""
    try:
        p = subprocess.run([python, "-c", "import skyctl.cli, skyctl.taskfile, yaml"],
                           env=_client_env(pythonpath), preexec_fn=_drop_to_nobody,
                           capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"{python}: {e}"
    return None if p.returncode == 0 else f"{python}: {p.stderr.strip()[-300:]}"


class NobodyClient:
    """How to start skyctl as nobody: the test interpreter if nobody may run it, else
    the system interpreter of the same version with copies of skyctl's two
    dependencies (msgspec, yaml) beside the source tree."""

    def __init__(self, python: str, pythonpath: str):
        self.python, self.pythonpath = python, pythonpath

    @property
    def uses_fixture(self) -> bool:
        return self.python == sys.executable

    def cmd(self, d, *args: str) -> tuple[list[str], dict[str, str]]:
        env = _client_env(self.pythonpath)
        env["SKYD_HOST"] = d.host
        return [self.python, "-m", "skyctl", *args], env

    def run(self, d, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        if self.uses_fixture:
            return d.skyctl(*args, user=NOBODY, timeout=timeout)
        cmd, env = self.cmd(d, *args)
        return subprocess.run(cmd, env=env, preexec_fn=_drop_to_nobody, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, d, *args: str) -> subprocess.Popen:
        cmd, env = self.cmd(d, *args)
        return subprocess.Popen(cmd, env=env, preexec_fn=_drop_to_nobody, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def nobody_client():
    try:
        grp.getgrnam(GROUP)
        pwd.getpwuid(NOBODY[0])
    except KeyError:
        pytest.skip(f"no user {NOBODY[0]} or group {GROUP!r} on this system")
    base_path = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    why = _probe(sys.executable, base_path)
    if why is None:
        yield NobodyClient(sys.executable, base_path)
        return
    # The test interpreter lives where nobody cannot go (e.g. under /root).
    import msgspec
    import yaml
    v = sys.version_info
    system = shutil.which(f"python{v.major}.{v.minor}", path="/usr/local/bin:/usr/bin:/bin")
    if system is None:
        pytest.skip(f"nobody cannot run skyctl ({why}) and there is no system "
                    f"python{v.major}.{v.minor}")
    deps = Path(tempfile.mkdtemp(prefix="skyd-client-", dir="/tmp"))
    try:
        for mod in (msgspec, yaml):
            src = Path(mod.__file__).parent
            shutil.copytree(src, deps / src.name)
        os.chmod(deps, 0o755)
        for dirpath, dirnames, filenames in os.walk(deps):
            for n in dirnames:
                os.chmod(os.path.join(dirpath, n), 0o755)
            for n in filenames:
                os.chmod(os.path.join(dirpath, n), 0o644)
        path = str(ROOT) + os.pathsep + str(deps)
        why2 = _probe(system, path)
        if why2 is not None:
            pytest.skip(f"nobody cannot run skyctl: {why}; fallback {why2}")
        yield NobodyClient(system, path)
    finally:
        shutil.rmtree(deps, ignore_errors=True)


@pytest.fixture
def shared(make_daemon, workdir, nobody_client):
    """A daemon whose socket nobody may reach: 0660 for the group nogroup."""
    os.chmod(workdir, 0o755)          # mkdtemp made it 0700: let nobody reach the socket
    return make_daemon("--socket-group", GROUP)


def as_root(d, *args: str) -> subprocess.CompletedProcess:
    return d.skyctl(*args)


def json_of(p: subprocess.CompletedProcess):
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return json.loads(p.stdout)


def launch_root_cluster(d, workdir: Path, name: str = "rootc") -> None:
    task = write_task(workdir, f"{name}.yaml",
                      "setup: echo root-setup\nrun: echo root-job-output\n")
    p = as_root(d, "launch", str(task), "-c", name)
    assert p.returncode == 0, p.stderr
    assert "root-job-output" in p.stdout


def long_ids(d) -> set[str]:
    recs = d.call(protocol.ApiStatus(all_statuses=True, all_users=True, limit=10_000))
    return {r.id for r in recs if r.queue is protocol.Queue.LONG}


# ---- the socket ---------------------------------------------------------------------------

def test_socket_is_0600_by_default_and_nobody_cannot_connect(daemon, workdir, nobody_client):
    st = os.stat(daemon.socket)
    assert oct(st.st_mode & 0o777) == oct(0o600)
    assert st.st_uid == 0
    os.chmod(workdir, 0o755)                  # only the socket's own mode keeps nobody out
    p = nobody_client.run(daemon, "api", "info")
    assert p.returncode == 5, (p.returncode, p.stdout, p.stderr)     # denied (README's table)
    assert "permission denied" in p.stderr
    assert as_root(daemon, "api", "info").returncode == 0


def test_socket_is_0660_for_the_socket_group(shared):
    st = os.stat(shared.socket)
    assert oct(st.st_mode & 0o777) == oct(0o660)
    assert st.st_gid == grp.getgrnam(GROUP).gr_gid
    assert st.st_uid == 0


def test_nobody_is_nobody_and_not_admin(shared, nobody_client):
    p = nobody_client.run(shared, "api", "info")
    assert p.returncode == 0, p.stderr
    assert "user:        nobody (uid 65534)" in p.stdout, p.stdout
    assert "admin" not in p.stdout
    info = json_of(nobody_client.run(shared, "api", "info", "--json"))
    assert (info["user"], info["uid"], info["admin"]) == ("nobody", 65534, False)
    mine = shared.call(protocol.ApiInfo())
    assert (mine.user, mine.uid, mine.admin) == ("root", 0, True)


def test_an_admin_group_member_is_admin(make_daemon, workdir, nobody_client):
    os.chmod(workdir, 0o755)
    d = make_daemon("--socket-group", GROUP, "--admin-group", GROUP)
    info = json_of(nobody_client.run(d, "api", "info", "--json"))
    assert (info["user"], info["admin"]) == ("nobody", True)


# ---- clusters: see and control only your own ------------------------------------------------

def test_nobody_cannot_see_or_touch_roots_cluster(shared, workdir, nobody_client):
    launch_root_cluster(shared, workdir)
    before_requests = long_ids(shared)

    names = [c["name"] for c in json_of(nobody_client.run(shared, "status", "--json"))]
    assert names == []
    p = nobody_client.run(shared, "status")
    assert p.returncode == 0 and "rootc" not in p.stdout, p.stdout
    p = nobody_client.run(shared, "status", "-u", "--json")      # -u is for admins
    assert p.returncode == 5 and "admins only" in p.stderr, (p.returncode, p.stdout, p.stderr)
    assert "rootc" not in p.stdout + p.stderr

    # Root's cluster answers exactly as a missing one; its name is only "taken" for a launch.
    for args in (("queue", "rootc"), ("logs", "rootc"), ("logs", "rootc", "1", "--no-follow"),
                 ("cancel", "rootc", "1"), ("cancel", "rootc", "--all"),
                 ("down", "rootc"), ("stop", "rootc"), ("start", "rootc"),
                 ("exec", "-c", "rootc", "echo intruder"), ("status", "rootc"),
                 ("launch", "-c", "rootc", "echo intruder")):
        p = nobody_client.run(shared, *args)
        if args[0] == "launch":
            assert p.returncode == 5, (args, p.returncode, p.stdout, p.stderr)
            assert "'rootc' is taken by another user" in p.stderr, (args, p.stderr)
        else:
            assert p.returncode == 2, (args, p.returncode, p.stdout, p.stderr)
            assert "cluster 'rootc' does not exist" in p.stderr, (args, p.stderr)
        assert "root" not in p.stderr.replace("rootc", ""), (args, p.stderr)
        assert "root-job-output" not in p.stdout

    # Nothing changed.
    assert long_ids(shared) == before_requests
    [c] = shared.call(protocol.ClusterStatus(all_users=True))
    assert (c.name, c.status, c.user) == ("rootc", "UP", "root")
    jobs = shared.call(protocol.JobQueue(cluster="rootc"))
    assert [(j.job_id, j.status, j.user) for j in jobs] == [(1, "SUCCEEDED", "root")]
    assert os.stat(shared.state_dir / "clusters" / "rootc").st_uid == 0
    p = as_root(shared, "logs", "rootc", "1", "--no-follow")
    assert p.stdout == "root-job-output\n"



@pytest.mark.timeout(150)   # its waits: 10 s, 30 s, then up to 3 requests of 30 s
@pytest.mark.parametrize("args, consequence", [
    pytest.param(("down", "rootc"), "root's cluster was dropped",
                 id="down"),
    pytest.param(("launch", "-c", "rootc", "echo intruder"), "root's cluster dir was chowned",
                 id="launch"),
    pytest.param(("exec", "-c", "rootc", "echo intruder"), "nobody got a job on root's cluster",
                 id="exec"),
])
def test_nobody_cannot_act_on_roots_cluster_while_its_launch_is_queued(
        make_daemon, workdir, nobody_client, args, consequence):
    os.chmod(workdir, 0o755)
    d = make_daemon("--socket-group", GROUP, "--long-slots", "1")
    gate = workdir / "gate"
    blocker = d.submit_async(protocol.Launch(task=Task(
        setup=f"for i in $(seq 600); do [ -e {gate} ] && exit 0; sleep 0.05; done"),
        cluster="blocker"))
    assert wait_until(lambda: d.request(blocker).status is Status.RUNNING, 10)
    root_launch = d.submit_async(protocol.Launch(task=Task(setup="echo root-setup"),
                                                 cluster="rootc"))
    assert d.request(root_launch).status is Status.PENDING     # queued behind the blocker

    proc = nobody_client.popen(d, *args)
    try:
        # Until nobody's request is refused, or accepted and queued behind root's launch.
        assert wait_until(lambda: proc.poll() is not None or any(
            r.uid == NOBODY[0] for r in d.call(protocol.ApiStatus(all_users=True))), 30)
    finally:
        gate.touch()
        out, err = proc.communicate(timeout=60)
    for r in d.call(protocol.ApiStatus(all_users=True)):
        d.wait_request(r.id)
    assert d.request(root_launch).status is Status.SUCCEEDED

    # Acting on it answers as a missing cluster; launching says only that the name is taken.
    if args[0] == "launch":
        assert proc.returncode == 5, (proc.returncode, out, err)
        assert "'rootc' is taken by another user" in err
    else:
        assert proc.returncode == 2, (proc.returncode, out, err)
        assert "cluster 'rootc' does not exist" in err
    assert "root" not in err.replace("rootc", "")
    clusters = {c.name: c for c in d.call(protocol.ClusterStatus(all_users=True))}
    assert "rootc" in clusters, consequence
    assert (clusters["rootc"].status, clusters["rootc"].user) == ("UP", "root")
    assert os.stat(d.state_dir / "clusters" / "rootc").st_uid == 0, consequence
    assert d.call(protocol.JobQueue(cluster="rootc")) == [], consequence


# ---- requests: see and control only your own ------------------------------------------------

def test_nobody_cannot_cancel_or_read_roots_request(shared, workdir, nobody_client):
    task = write_task(workdir, "long.yaml", "setup: sleep 60\n")
    p = as_root(shared, "launch", "--async", "-c", "slow", str(task))
    assert p.returncode == 0, p.stderr
    rid = p.stdout.strip()
    assert wait_until(lambda: shared.request(rid).status is Status.RUNNING, 10)

    # Root's request answers as one that does not exist.
    p = nobody_client.run(shared, "api", "cancel", rid)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"no request matches '{rid}'" in p.stderr and "root" not in p.stderr
    p = nobody_client.run(shared, "api", "cancel", rid[:8])
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"no request matches '{rid[:8]}'" in p.stderr
    p = nobody_client.run(shared, "api", "cancel", "-u")
    assert p.returncode == 5, (p.returncode, p.stdout, p.stderr)
    assert "only an admin" in p.stderr
    p = nobody_client.run(shared, "api", "cancel", "--all")      # all of *nobody's*: none
    assert p.returncode == 0 and "Nothing to cancel" in p.stderr, (p.stdout, p.stderr)
    p = nobody_client.run(shared, "api", "logs", rid, "--no-follow")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"no request matches '{rid}'" in p.stderr
    assert "running launch" not in p.stdout + p.stderr       # skyd's lines go to stderr

    # Still running, its setup still alive (RUNNING comes before the setup starts: a
    # loaded machine may take seconds from one to the other).
    time.sleep(0.2)
    assert shared.request(rid).status is Status.RUNNING

    def setup_sleeps() -> list[int]:
        return [pid for pid in _pids_under(shared.state_dir, "sleep") if pid_alive(pid)]
    assert wait_until(setup_sleeps, 20), "root's setup should still be running"
    sleeps = setup_sleeps()

    # Root is an admin (and the owner): the cancel goes through.
    p = as_root(shared, "api", "cancel", rid)
    assert p.returncode == 0 and f"Cancelled {rid}" in p.stderr, (p.stdout, p.stderr)
    assert shared.wait_request(rid, 15).status is Status.CANCELLED
    assert wait_until(lambda: not any(pid_alive(pid) for pid in sleeps), 10)


def test_admin_cancels_someone_elses_request(shared, workdir, nobody_client):
    task = write_task(workdir, "nlong.yaml", "setup: sleep 20\n")
    p = nobody_client.run(shared, "launch", "--async", "-c", "nslow", str(task))
    assert p.returncode == 0, p.stderr
    rid = p.stdout.strip()
    assert wait_until(lambda: shared.request(rid).status is Status.RUNNING, 10)
    assert shared.request(rid).user == "nobody"
    assert shared.call(protocol.ApiCancel(request_ids=[rid])) == [rid]
    assert shared.wait_request(rid, 15).status is Status.CANCELLED


def test_nobody_sees_only_their_own_requests_unless_all_users(shared, workdir, nobody_client):
    task = write_task(workdir, "long.yaml", "setup: sleep 20\n")
    root_rid = shared.submit_async(protocol.Launch(task=Task(setup="sleep 20"), cluster="rs"))
    p = nobody_client.run(shared, "launch", "--async", "-c", "mine", str(task))
    assert p.returncode == 0, p.stderr
    nobody_rid = p.stdout.strip()

    ids = {r["id"] for r in json_of(nobody_client.run(shared, "api", "status", "--json"))}
    assert root_rid not in ids
    assert nobody_rid in ids
    ids = {r["id"] for r in json_of(nobody_client.run(shared, "api", "status", "-a", "--json"))}
    assert root_rid not in ids and nobody_rid in ids
    # -u is for admins: nobody gets a clear error, not a silent list of their own.
    for args in (("-u",), ("-u", "-a")):
        p = nobody_client.run(shared, "api", "status", *args, "--json")
        assert p.returncode == 5 and "admins only" in p.stderr, (args, p.returncode, p.stderr)
        assert root_rid not in p.stdout + p.stderr and nobody_rid not in p.stdout
    every = {r.id: r.user for r in shared.call(protocol.ApiStatus(all_users=True))}
    assert every.get(root_rid) == "root" and every.get(nobody_rid) == "nobody"
    p = nobody_client.run(shared, "api", "status")
    assert root_rid not in p.stdout and nobody_rid in p.stdout
    # Root sees only its own too without -u (admin or not, the default is "mine").
    mine = {r.id for r in shared.call(protocol.ApiStatus())}
    assert root_rid in mine and nobody_rid not in mine
    shared.call(protocol.ApiCancel(all_users=True))
    shared.wait_request(root_rid, 15)
    shared.wait_request(nobody_rid, 15)


# ---- a job runs as the person who asked ----------------------------------------------------

def test_nobodys_job_runs_as_nobody(shared, workdir, nobody_client):
    task = write_task(workdir, "whoami.yaml", """
setup: |
  echo "setup-ids=$(id -u):$(id -g):$(id -G)"
  grep -E '^(Uid|Gid|Groups|CapEff|CapPrm):' /proc/$PPID/status | tr -s '\\t ' ' ' | sed 's/^/worker-/'
run: |
  echo "run-ids=$(id -u):$(id -g):$(id -G)"
  echo "run-home=$HOME run-user=$USER"
  grep -E '^(CapEff|CapPrm):' /proc/self/status | tr -s '\\t ' ' ' | sed 's/^/run-/'
  touch made-by-job
""")
    p = nobody_client.run(shared, "launch", str(task), "-c", "nbc")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    out = p.stdout
    assert "setup-ids=65534:65534:65534\n" in out, out
    assert "run-ids=65534:65534:65534\n" in out, out
    # The worker process that ran the request had dropped root entirely.
    assert "worker-Uid: 65534 65534 65534 65534" in out, out
    assert "worker-Gid: 65534 65534 65534 65534" in out, out
    assert "worker-Groups: 65534" in out, out
    assert "worker-CapEff: 0000000000000000" in out, out
    assert "run-CapEff: 0000000000000000" in out, out
    assert "run-CapPrm: 0000000000000000" in out, out
    assert "run-user=nobody" in out

    [c] = shared.call(protocol.ClusterStatus(all_users=True))
    assert (c.name, c.user, c.uid, c.status) == ("nbc", "nobody", 65534, "UP")
    [job] = shared.call(protocol.JobQueue(cluster="nbc"))
    assert (job.user, job.uid, job.status) == ("nobody", 65534, "SUCCEEDED")
    node = Path(c.nodes[0].path)
    assert os.stat(node.parent).st_uid == 65534
    made = node / "sky_workdir" / "made-by-job"
    assert (os.stat(made).st_uid, os.stat(made).st_gid) == NOBODY
    # Nobody reads their own job's log; root (admin) may too.
    p = nobody_client.run(shared, "logs", "nbc", "1", "--no-follow")
    assert p.returncode == 0 and "run-ids=65534" in p.stdout, (p.stdout, p.stderr)
    assert "run-ids=65534" in as_root(shared, "logs", "nbc", "1", "--no-follow").stdout


def test_nobodys_task_cannot_copy_files_only_root_may_read(shared, workdir, nobody_client):
    secret = workdir / "root-only.txt"
    secret.write_text("root-secret-content\n")
    os.chmod(secret, 0o600)
    task = write_task(workdir, "steal.yaml", f"""
file_mounts:
  /stolen.txt: {secret}
run: cat ../stolen.txt; cat {secret}
""")
    p = nobody_client.run(shared, "launch", str(task), "-c", "thief")
    assert p.returncode != 0
    assert "root-secret-content" not in p.stdout + p.stderr
    for path in (shared.state_dir / "clusters").rglob("*"):
        if path.is_file():
            assert b"root-secret-content" not in path.read_bytes(), path


def _may_read(path: Path, uid: int, gids: set[int]) -> bool:
    """Whether `uid` (in `gids`) could open `path` for reading: search on every directory
    above it, read on it. Decided from the modes, as root: a directory nobody cannot list
    (0711) still lets them open a file whose name they know or guess."""
    def allowed(st: os.stat_result, bit: int) -> bool:
        if st.st_uid == uid:
            return bool(st.st_mode & (bit << 6))
        if st.st_gid in gids:
            return bool(st.st_mode & (bit << 3))
        return bool(st.st_mode & bit)
    return (all(allowed(os.stat(p), 1) for p in reversed(path.parents))
            and allowed(os.lstat(path), 4))


def test_other_users_cannot_read_roots_secrets_from_the_state_dir(make_daemon, workdir):
    import stat
    os.chmod(workdir, 0o755)          # as for a team: others may reach the state dir
    d = make_daemon("--socket-group", GROUP)
    secret = b"s3cret-root-token-42"
    task = write_task(workdir, "secret.yaml", "secrets:\n  TOKEN: s3cret-root-token-42\n"
                      "setup: echo \"setup ${#TOKEN}\"\nrun: echo \"${#TOKEN}\"\n")
    p = as_root(d, "launch", str(task), "-c", "sec")
    assert p.returncode == 0 and p.stdout.strip().endswith("20"), (p.stdout, p.stderr)
    # Walk everything under the state dir as root: no file that nobody could open (by its
    # mode and its directories' modes) may hold the secret.
    holders, exposed = [], []
    for dirpath, _, filenames in os.walk(d.state_dir):
        for name in filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or secret not in path.read_bytes():
                continue
            holders.append(path)
            if _may_read(path, NOBODY[0], {NOBODY[1]}) or st.st_mode & 0o044:
                exposed.append((str(path), oct(st.st_mode)))
    assert holders, "the secret is stored somewhere (the request's row): the walk missed it"
    assert exposed == []


def _pids_under(directory: Path, text: str) -> list[int]:
    """Processes running in `directory` (their cwd) whose command line contains `text`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry.name}/cwd")
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if cwd.startswith(str(directory)) and text.encode() in cmd:
            found.append(int(entry.name))
    return found
