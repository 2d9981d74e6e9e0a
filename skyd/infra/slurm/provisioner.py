"""The slurm infra's worker side, run as the cluster's owner: a cluster is one allocation
(a batch job holding `num_nodes` nodes), submitted as the owner so their own account
and fair share apply; its files live in the owner's home, which the nodes share.

Launch finds the cluster's allocation (an interrupted launch left one) or submits it,
waits until it runs — a file its batch script writes says so without asking Slurm;
`squeue`, backing off, gives Slurm's pending reason for the request's log — and reads
its nodes. Setup runs as one `srun` step on every node; a job is prepared as files (its
step's launcher, the node wrapper, its script and environment) that the daemon's
runner starts. Down cancels the allocation and removes the files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, TypeVar

from skyd import privilege
from skyd.infra.base import JobHandle, NodeProc, Provisioner, pump_lines
from skyd.infra.local.processes import alive, signal_job
from skyd.infra.local.provisioner import WORKDIR, env_script, setup_failed
from skyd.infra.slurm import board, scripts
from skyd.infra.slurm.allocation import FORMAT, Allocation, job_name, memory_bytes, newest, \
    parse_lines, step_name, valid_job_id
from skyd.infra.slurm.commands import UNKNOWN_JOB, Slurm, SlurmUnreachable, failure, not_found, say
from skyd.infra.slurm.settings import SlurmSettings
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError
from skyd.taskspec import Task, parse_accelerators, parse_amount

T = TypeVar("T")

POLL = (2.0, 30.0)          # own squeue while the daemon's board is stale: first gap, longest
# The marker file: a stat every 10 ms (it is what a launch waits on: its latency) for
# the first minute, then every half second.
MARKER_POLL = (0.01, 60.0, 0.5)
PATIENCE = 120.0            # seconds Slurm may not answer before the launch gives up
STOP_GRACE = 5.0            # seconds for a job's srun to end its step after SIGTERM
REQUEST_FILE = "allocation.json"   # what the allocation asks for (to submit it again on start)

# sbatch's refusals that are the task's (or the settings') fault, and what to say.
REFUSALS = {
    "Invalid partition name": "Slurm has no {where}",
    "Requested node configuration is not available":
        "no node of {where} offers what the task asks for ({shape})",
    "Invalid generic resource": "Slurm does not know the GPUs (GRES) the task asks for ({shape})",
    "Invalid account": "Slurm refuses the account {account!r} for {where}",
    "Invalid qos": "Slurm refuses the QOS {qos!r}",
    "Memory specification can not be satisfied":
        "no node of {where} has the memory the task asks for ({shape})",
    "More processors requested than permitted":
        "the task asks for more CPUs than {where} permits ({shape})",
    "Node count specification invalid":
        "{where} cannot give the task's number of nodes ({shape})",
    "Requested time limit is invalid": "Slurm refuses the time limit {time_limit!r}",
}


class _Cancelled(BaseException):
    """The launch request was cancelled (SIGTERM) while the allocation waited."""


def allocation_shapes(task: Task) -> list[list[str]]:
    """What one node of the allocation asks for, as sbatch arguments: one shape per GPU
    option of the task, in its order of preference (GRES types are the site's names:
    the model as written, then in lower case — `H100:8` is tried as gpu:H100:8, then
    gpu:h100:8)."""
    shape = []
    cpus = parse_amount("cpus", task.resources.cpus)
    if cpus is not None:
        shape.append(f"--cpus-per-task={math.ceil(cpus.value)}")
    memory = parse_amount("memory", task.resources.memory)
    if memory is not None:
        shape.append(f"--mem={math.ceil(memory.value * 1024)}M")
    gres = []
    for ask in parse_accelerators(task.resources.accelerators):
        for model in dict.fromkeys((ask.model, ask.model.lower())):
            gres.append(f"--gres=gpu:{model}:{ask.count}")
    return [[*shape, g] for g in gres] or [shape]


class SlurmProvisioner(Provisioner):
    """`task`: the task being launched (None for start: the allocation is asked for as
    the launch asked, from the cluster's files)."""

    def __init__(self, settings: SlurmSettings, uid: int, task: Task | None = None):
        self.settings = settings
        self.uid = uid
        self.user, _gid, self.home, _shell = privilege.identity(uid)
        self.task = task
        self.slurm = Slurm(settings, privilege.login_env(uid))

    def cluster_dir(self, name: str) -> Path:
        return Path(self.home) / self.settings.files_dir / name

    # ---- the allocation ------------------------------------------------------------------

    def provision(self, state_dir: str, cluster: ClusterRecord) -> list[NodeInfo]:
        d = self.cluster_dir(cluster.name)
        old = os.umask(0o077)
        try:
            for sub in (WORKDIR, "jobs"):
                (d / sub).mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old)
        shapes = self._shapes(d)
        with _cancellable():
            try:
                # Again while the controller does not answer (it restarts): each attempt
                # looks first, so that a submission it did accept is not made twice.
                job_id = _patiently(lambda: self._adopt_or_submit(cluster, d, shapes))
                alloc = self._wait(job_id, d, state_dir)
            except _Cancelled:
                # Its request was cancelled: what it was waiting for goes too.
                self.slurm.run("scancel", f"--user={self.user}", f"--name={job_name(cluster.name)}",
                               "--state=PENDING", check=False, timeout=5)
                raise SkydError(ErrorCode.FAILED, "cancelled while waiting for Slurm; the "
                                "pending allocation was cancelled") from None
        return _patiently(lambda: self._nodes(alloc, d))

    def _shapes(self, d: Path) -> list[list[str]]:
        """The task's per-node requests, remembered in the cluster's files for `start`."""
        saved = d / REQUEST_FILE
        if self.task is not None:
            shapes = allocation_shapes(self.task)
            saved.write_text(json.dumps(shapes))
            return shapes
        try:
            shapes = json.loads(saved.read_text())
        except (OSError, ValueError):
            raise SkydError(ErrorCode.FAILED, "this cluster's allocation request is gone "
                            f"({saved})", "launch the cluster again instead") from None
        if not isinstance(shapes, list) or not shapes or not all(
                isinstance(shape, list) and all(
                    isinstance(a, str) and a.startswith(("--cpus-per-task=", "--mem=", "--gres="))
                    for a in shape) for shape in shapes):
            raise SkydError(ErrorCode.FAILED, f"{saved} is not an allocation request",
                            "launch the cluster again instead")
        return shapes

    def _query(self, *args: str) -> list[Allocation]:
        return parse_lines(self.slurm.run("squeue", "-h", "-a", "-t", "all", "-o", FORMAT,
                                          *args).stdout)

    def _find(self, cluster: str) -> Allocation | None:
        """The cluster's allocation that still holds or waits for nodes, if any."""
        allocs = self._query(f"--user={self.user}", f"--name={job_name(cluster)}")
        return newest(allocs, cluster, self.user, live_only=True)

    def _adopt_or_submit(self, cluster: ClusterRecord, d: Path, shapes: list[list[str]]) -> str:
        """The id of the cluster's allocation: one an interrupted launch left (or `start`
        on a cluster that is up), else a new one — of the first shape Slurm accepts (the
        others differ in GPUs: one Slurm does not know, or no node has, is passed over)."""
        found = self._find(cluster.name)
        if found is not None:
            say(f"Using this cluster's allocation: {found.describe()}.")
            return found.job_id
        refused: SkydError | None = None
        for shape in shapes:
            try:
                return self._submit(cluster, d, shape)
            except SkydError as e:
                if e.code != ErrorCode.INVALID_TASK or not any(a.startswith("--gres=") for a in shape):
                    raise
                refused = refused or e
                say(f"Slurm refused {shape[-1].removeprefix('--gres=')}: {e.message}")
        assert refused is not None
        if len(shapes) == 1:
            raise refused
        tried = ", ".join(shape[-1].removeprefix("--gres=") for shape in shapes)
        raise SkydError(ErrorCode.INVALID_TASK, f"Slurm refused every GPU option of the task "
                        f"({tried}); the first: {refused.message}", refused.hint)

    def _submit(self, cluster: ClusterRecord, d: Path, shape: list[str]) -> str:
        s = self.settings
        partition = s.partition_of(cluster.infra)
        say(f"Submitting an allocation to Slurm: {cluster.num_nodes} node(s)"
            f"{', ' + ' '.join(shape) if shape else ''}"
            f"{', partition ' + partition if partition else ''}...")
        p = self.slurm.run(
            "sbatch", "--parsable", f"--job-name={job_name(cluster.name)}",
            f"--nodes={cluster.num_nodes}", "--ntasks-per-node=1", *shape,
            *([f"--partition={partition}"] if partition else []),
            *([f"--account={s.account}"] if s.account else []),
            *([f"--qos={s.qos}"] if s.qos else []),
            *([f"--time={s.time_limit}"] if s.time_limit else []),
            f"--chdir={d}", "--output=/dev/null", f"--wrap={scripts.holder_script(str(d))}",
            check=False)
        if p.returncode == 0:
            return p.stdout.strip().split(";")[0]
        self._refused(p.stderr, partition, shape)
        raise failure("sbatch", p.returncode, p.stderr)

    def _refused(self, stderr: str, partition: str, shape: list[str]) -> None:
        for needle, text in REFUSALS.items():
            if needle.lower() in stderr.lower():
                s = self.settings
                raise SkydError(ErrorCode.INVALID_TASK, text.format(
                    where=f"partition {partition!r}" if partition else "the default partition",
                    partition=partition, account=s.account, qos=s.qos,
                    time_limit=s.time_limit, shape=" ".join(shape) or "the defaults"),
                    f"Slurm said: {stderr.strip().splitlines()[-1]}")

    def _wait(self, job_id: str, d: Path, state_dir: str) -> Allocation:
        """Until the allocation holds its nodes. Its batch script's marker file says so at
        once. Meanwhile what Slurm does with it comes from the daemon's board (one squeue
        for every cluster: a waiting launch asks Slurm nothing), or — while the board is
        older than the submission (the daemon looks every watch_interval while clusters
        are launched) — from an squeue of its own, backing off. Slurm's pending reason
        goes to the request's log as it changes. Bounded: a reason Slurm will never get
        over, an allocation Slurm lost or ended, a controller silent for PATIENCE."""
        marker = d / f"{scripts.MARKER}-{job_id}"
        since = time.time()                 # boards from before this may not know the job
        fresh = 3 * self.settings.watch_interval + 2.0
        shown, missing, last_board = "", 0, 0.0
        gap, next_query = POLL[0], time.monotonic() + POLL[0]
        answered = time.monotonic()
        while True:
            if marker.exists():
                return self._holding(job_id, marker)
            alloc, trouble = None, ""
            b = board.read(state_dir, self.uid, fresh)
            if b is not None and b.time > since:
                next_query = time.monotonic() + gap         # the board serves
                alloc, trouble = b.get(job_id), b.error
                if alloc is None and not trouble and b.time != last_board:
                    missing += 1
                last_board = b.time
            elif time.monotonic() >= next_query:
                try:
                    alloc = self._one(job_id)
                    missing = 2 if alloc is None else 0
                except SlurmUnreachable as e:
                    trouble = e.message
                next_query, gap = time.monotonic() + gap, min(gap * 2, POLL[1])
            if missing >= 2:
                raise SkydError(ErrorCode.FAILED, f"Slurm no longer knows allocation {job_id} "
                                "(its controller may have restarted and lost it)", "launch again")
            if trouble:
                if time.monotonic() - answered > PATIENCE:
                    raise SkydError(ErrorCode.FAILED, f"{trouble} for {PATIENCE:g}s")
                if trouble != shown:
                    say(f"{trouble}; waiting for it")
                    shown = trouble
            elif alloc is not None:
                answered = time.monotonic()
                if alloc.holding:
                    return alloc
                self._check_pending(alloc)
                text = f"Waiting for Slurm: {alloc.describe()}"
                if text != shown:
                    say(text)
                    shown = text
            time.sleep(MARKER_POLL[0] if time.time() - since < MARKER_POLL[1] else MARKER_POLL[2])

    def _one(self, job_id: str) -> Allocation | None:
        return next(iter(self._query(f"--jobs={job_id}")), None)

    def _holding(self, job_id: str, marker: Path) -> Allocation:
        """The allocation whose batch script runs: what its marker says it holds (else
        one squeue)."""
        held = scripts.parse_marker(marker.read_text())
        if held is not None:
            nodelist, nodes, cpus, mib = held
            return Allocation(job_id, self.user, "RUNNING", nodes, cpus * nodes,
                              f"{mib}M", "", nodelist, "", "")
        alloc = _patiently(lambda: self._one(job_id))
        if alloc is None or not alloc.holding:
            raise SkydError(ErrorCode.FAILED, f"allocation {job_id} started and ended at once: "
                            f"{alloc.describe() if alloc else 'Slurm no longer knows it'}")
        return alloc

    def _check_pending(self, alloc: Allocation) -> None:
        """Fail (cancelling it) an allocation Slurm ended, or will never start."""
        if alloc.ended:
            raise SkydError(ErrorCode.FAILED, f"the allocation ended before it started: "
                            f"{alloc.describe()}")
        never = alloc.never_starts
        if never:
            self.slurm.run("scancel", alloc.job_id, check=False)
            raise SkydError(ErrorCode.INVALID_TASK, f"Slurm will never start this allocation: "
                            f"{never} ({alloc.reason}); it was cancelled",
                            "ask for less, or another partition")

    def _nodes(self, alloc: Allocation, d: Path) -> list[NodeInfo]:
        """The allocation's nodes in Slurm's order (that of SLURM_NODEID), with their
        addresses (SkyPilot's node IPs) and what each holds for the cluster."""
        names = self.slurm.run("scontrol", "show", "hostnames", alloc.nodelist).stdout.split() \
            if any(c in alloc.nodelist for c in "[,") else [alloc.nodelist]
        addresses = {}
        for line in self.slurm.run("sinfo", "-h", "-N", "-n", alloc.nodelist,
                                   "-o", "%N|%o").stdout.splitlines():
            name, _, addr = line.partition("|")
            addresses[name.strip()] = addr.strip()
        cpus = alloc.cpus / max(1, alloc.nodes)
        say(f"Allocated: {alloc.describe()}.")
        return [NodeInfo(rank=i, ip=addresses.get(name) or name, host=name, path=str(d),
                         user=self.user, cpus=cpus, memory_bytes=memory_bytes(alloc.memory),
                         allocation=alloc.job_id)
                for i, name in enumerate(names)]

    # ---- files ---------------------------------------------------------------------------
    # The cluster's directory is shared by its nodes (the owner's home): one copy serves all.

    def sync_workdir(self, nodes: list[NodeInfo], src: str) -> None:
        source = Path(src).expanduser()
        if not source.is_dir():
            raise SkydError(ErrorCode.INVALID_TASK, f"workdir {src} does not exist or is not a directory")
        shutil.copytree(source, Path(nodes[0].path) / WORKDIR, dirs_exist_ok=True, symlinks=True)

    def sync_file_mounts(self, nodes: list[NodeInfo], mounts: Mapping[str, str]) -> None:
        """Targets are relative to the cluster's directory (or ~ of the task), as on local."""
        for target, src in mounts.items():
            source = Path(src).expanduser()
            if not source.exists():
                raise SkydError(ErrorCode.INVALID_TASK, f"file_mounts: source {src} does not exist")
            dst = Path(nodes[0].path) / target.lstrip("/").removeprefix("~/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, dst, dirs_exist_ok=True, symlinks=True)
            else:
                shutil.copy2(source, dst)

    # ---- setup and jobs ------------------------------------------------------------------

    def run_setup(self, nodes: list[NodeInfo], script: str,
                  envs: Callable[[NodeInfo], dict]) -> None:
        """One step on every node at once, its output streamed to the request's log."""
        d = Path(nodes[0].path)
        (d / "setup.sh").write_text(script)
        wrapper = d / "setup-node.sh"
        wrapper.write_text(scripts.node_wrapper("SKYPILOT_SETUP_", str(d / WORKDIR),
                                                str(d / "setup.sh")))
        argv = scripts.step_argv(self.settings, nodes[0].allocation, len(nodes), "skyd-setup")
        try:
            p = subprocess.Popen([*argv, "bash", str(wrapper)], cwd=d / WORKDIR,
                                 env=self._step_env(envs(nodes[0])),
                                 stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise not_found("srun", self.settings) from None
        tail: list[bytes] = []
        assert p.stdout is not None
        pump_lines(p.stdout, b"", tail, sys.stdout.buffer)
        rc = p.wait()
        if rc != 0:
            raise setup_failed(nodes[0], rc, tail)

    def prepare_job(self, nodes: list[NodeInfo], job_id: int, run: str,
                    envs: Callable[[NodeInfo], dict]) -> JobHandle:
        """The job's files: its script, the node wrapper, its step's launcher (run.sh,
        which the daemon's runner starts on this host) and its environment (0600)."""
        d = Path(nodes[0].path)
        jobdir = d / "jobs" / str(job_id)
        shutil.rmtree(jobdir, ignore_errors=True)    # fresh: nothing left passes for this job
        jobdir.mkdir(parents=True, mode=0o700)
        (jobdir / "task.sh").write_text(run)
        wrapper = jobdir / "node.sh"
        wrapper.write_text(scripts.node_wrapper("SKYPILOT_", str(d / WORKDIR),
                                                str(jobdir / "task.sh")))
        argv = scripts.step_argv(self.settings, nodes[0].allocation, len(nodes), step_name(job_id))
        (jobdir / "run.sh").write_text(scripts.launcher(argv, str(wrapper)))
        fd = os.open(jobdir / "env.sh", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(env_script(self._step_env(envs(nodes[0]))))
        # One runner (the step's srun client, on this host) serves every node.
        return JobHandle(nodes=[NodeProc(rank=0, pid=0, start=0, jobdir=str(jobdir),
                                         log=str(jobdir / "run.log"))])

    def _step_env(self, env: dict[str, str]) -> dict[str, str]:
        """A step's environment: the task's, with what Slurm's commands need; the GPUs a
        step sees are Slurm's to say (it sets CUDA_VISIBLE_DEVICES on each node)."""
        env = self.settings.env(env)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        return env

    def stop_jobs(self, nodes: list[NodeInfo], handles: list[JobHandle]) -> None:
        """SIGTERM to each job's runner: its srun ends the step on every node."""
        started = [h for h in handles if h.spawned]
        for h in started:
            signal_job(h, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and any(alive(np) for h in started for np in h.nodes):
            time.sleep(0.05)
        for h in started:
            signal_job(h, signal.SIGKILL)

    def teardown(self, state_dir: str, cluster: ClusterRecord) -> None:
        """Cancel the allocation (and any an interrupted launch left), then remove the
        cluster's files. If Slurm does not answer the cluster stays, to be downed again:
        an allocation left running would go on costing its owner."""
        ids = {n.allocation for n in cluster.nodes if valid_job_id(n.allocation)}
        try:
            found = self._query(f"--user={self.user}", f"--name={job_name(cluster.name)}")
        except SlurmUnreachable as e:
            raise SkydError(ErrorCode.FAILED, f"could not cancel the cluster's Slurm allocation: "
                            f"{e.message}", "the cluster stays; run down again once Slurm "
                            "answers") from None
        ids |= {a.job_id for a in found if not a.ended}
        for job_id in sorted(ids):
            p = self.slurm.run("scancel", job_id, check=False)
            if p.returncode != 0 and not any(s in p.stderr for s in UNKNOWN_JOB):
                raise failure("scancel", p.returncode, p.stderr)
            say(f"Cancelled Slurm job {job_id}.")
        shutil.rmtree(self.cluster_dir(cluster.name), ignore_errors=True)


def _patiently(attempt: Callable[[], T]) -> T:
    """`attempt()`, again while Slurm's controller does not answer, for at most PATIENCE
    seconds (a restart takes well under one); then its error."""
    deadline = time.monotonic() + PATIENCE
    delay = 0.5
    while True:
        try:
            return attempt()
        except SlurmUnreachable as e:
            if time.monotonic() + delay > deadline:
                raise
            say(f"{e.message}; trying again in {delay:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def _raise_cancelled(signum: int, frame: object) -> None:
    raise _Cancelled()


@contextlib.contextmanager
def _cancellable() -> Iterator[None]:
    """SIGTERM (the request is cancelled) raises _Cancelled inside, so that the allocation
    is not left behind; the worker's own handling outside. Only the main thread may."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_cancelled)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
