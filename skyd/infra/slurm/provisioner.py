"""The slurm infra's worker side, run as the cluster's owner: a cluster is one allocation
(allocate.py: found or submitted as the owner, waited for, its nodes read); its files
live in the owner's home on the Slurm side (this host, or the login node: places.py),
which the nodes share, so one copy serves every node. Setup runs as one `srun` step on
every node, streamed to the request's log; a job is prepared as files — its script, the
node wrapper, its step's launcher (run.sh) and its environment — that the daemon's
runner starts. Down cancels the allocation and removes the files.

With a login node the daemon's runner still starts run.sh on this host (its output and
exit status in the daemon's control files); run.sh is then an ssh that runs the step's
srun on the login node (scripts.login_step). This host keeps a small directory of the
cluster's for it (run.sh and the runner's env.sh only); node.path names it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import msgspec

from skyd import privilege
from skyd.infra.base import JobHandle, NodeProc, Provisioner, pump_lines
from skyd.infra.local.processes import alive, signal_job
from skyd.infra.local.provisioner import WORKDIR, env_script, setup_failed
from skyd.infra.slurm import scripts
from skyd.infra.slurm.allocate import Allocator, allocation_shapes
from skyd.infra.slurm.allocation import step_name
from skyd.infra.slurm.commands import Slurm, not_found
from skyd.infra.slurm.places import Here, LoginNode, login_node
from skyd.infra.slurm.settings import SlurmSettings
from skyd.infra.ssh.connection import SshClient
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError
from skyd.taskspec import Task

STOP_GRACE = 5.0            # seconds for a job's srun to end its step after SIGTERM
# What the allocation asks for (to submit it again on start). Every launch writes it
# (synced) before it submits: found there, it says an earlier launch may have submitted.
REQUEST_FILE = "allocation.json"
# What the worker's own login environment says of this host, not of the login node's.
HOST_ONLY = ("HOME", "USER", "LOGNAME", "SHELL", "PATH", "LANG")


class SlurmProvisioner(Provisioner):
    """`task`: the task being launched (None for start: the allocation is asked for as
    the launch asked, from the cluster's files). `client`: the worker's ssh (needed with
    a login node)."""

    def __init__(self, settings: SlurmSettings, uid: int, task: Task | None = None,
                 client: SshClient | None = None):
        self.settings = settings
        self.uid = uid
        self.user, _gid, self.home, _shell = privilege.identity(uid)
        self.task = task
        self.login: LoginNode | None = None
        if settings.login:
            if client is None:
                raise ValueError("a login node needs the worker's ssh client")
            self.login = LoginNode(settings, client, login_node(settings, client, uid, self.user))
        self.place = self.login or Here(settings, privilege.login_env(uid), self.home)
        self.slurm = Slurm(settings, self.place)
        self.allocator = Allocator(self.slurm, uid, self.user)

    def local_dir(self, name: str) -> Path:
        """The cluster's directory on this host (the daemon's runner's side)."""
        return Path(self.home) / self.settings.files_dir / name

    def cluster_dir(self, name: str) -> str:
        """... and on the Slurm side (the same one without a login node)."""
        return f"{self.place.home()}/{self.settings.files_dir}/{name}"

    def _dir_of(self, nodes: list[NodeInfo]) -> str:
        return self.cluster_dir(Path(nodes[0].path).name)

    # ---- the allocation ------------------------------------------------------------------

    def provision(self, state_dir: str, cluster: ClusterRecord) -> list[NodeInfo]:
        d = self.cluster_dir(cluster.name)
        self.place.make_dirs(f"{d}/{WORKDIR}", f"{d}/jobs")
        local = self.local_dir(cluster.name)
        if self.login is not None:
            Here(self.settings, {}).make_dirs(str(local / WORKDIR), str(local / "jobs"))
        shapes, earlier = self._shapes(d)
        nodes = self.allocator.allocate(cluster, d, state_dir, shapes, look=earlier)
        return [msgspec.structs.replace(n, path=str(local)) for n in nodes]

    def _shapes(self, d: str) -> tuple[list[list[str]], bool]:
        """The task's per-node requests, remembered in the cluster's files for `start`;
        and whether to look for an allocation of the cluster before submitting one (Slurm's
        submission is not idempotent): always on `start`; on a launch when an earlier one
        wrote the file — it may have submitted (a launch re-run after a restart, one killed
        or failed after its sbatch). A first launch does not look: one squeue less."""
        saved = f"{d}/{REQUEST_FILE}"
        if self.task is not None:
            shapes = allocation_shapes(self.task)
            # Synced: a launch re-run after this host crashed still finds it.
            earlier = self.place.write_durably(saved, json.dumps(shapes))
            return shapes, earlier
        try:
            shapes = json.loads(self.place.wait_file(saved, 0.0) or "")
        except ValueError:
            raise SkydError(ErrorCode.FAILED, "this cluster's allocation request is gone "
                            f"({saved})", "launch the cluster again instead") from None
        if not isinstance(shapes, list) or not shapes or not all(
                isinstance(shape, list) and all(
                    isinstance(a, str) and a.startswith(("--cpus-per-task=", "--mem=", "--gres="))
                    for a in shape) for shape in shapes):
            raise SkydError(ErrorCode.FAILED, f"{saved} is not an allocation request",
                            "launch the cluster again instead")
        return shapes, True

    # ---- files ---------------------------------------------------------------------------
    # The cluster's directory is shared by its nodes (the owner's home): one copy serves all.

    def sync_workdir(self, nodes: list[NodeInfo], src: str) -> None:
        source = Path(src).expanduser()
        if not source.is_dir():
            raise SkydError(ErrorCode.INVALID_TASK, f"workdir {src} does not exist or is not a directory")
        self.place.copy_in(source, f"{self._dir_of(nodes)}/{WORKDIR}")

    def sync_file_mounts(self, nodes: list[NodeInfo], mounts: Mapping[str, str]) -> None:
        """Targets are relative to the cluster's directory (or ~ of the task), as on local."""
        for target, src in mounts.items():
            source = Path(src).expanduser()
            if not source.exists():
                raise SkydError(ErrorCode.INVALID_TASK, f"file_mounts: source {src} does not exist")
            self.place.copy_in(source, f"{self._dir_of(nodes)}/"
                               f"{target.lstrip('/').removeprefix('~/')}")

    # ---- setup and jobs ------------------------------------------------------------------

    def run_setup(self, nodes: list[NodeInfo], script: str,
                  envs: Callable[[NodeInfo], dict]) -> None:
        """One step on every node at once, its output streamed to the request's log."""
        d = self._dir_of(nodes)
        self.place.write(f"{d}/setup.sh", script)
        wrapper = f"{d}/setup-node.sh"
        self.place.write(wrapper, scripts.node_wrapper("SKYPILOT_SETUP_", f"{d}/{WORKDIR}",
                                                       f"{d}/setup.sh"))
        self.place.write(f"{d}/setup-env.sh", env_script(self._step_env(envs(nodes[0]))))
        argv = scripts.step_argv(self.settings, nodes[0].allocation, len(nodes), "skyd-setup")
        try:
            p = self.place.stream([*argv, "bash", wrapper], f"{d}/{WORKDIR}", f"{d}/setup-env.sh")
        except FileNotFoundError:
            raise not_found("srun", self.settings) from None
        tail: list[bytes] = []
        assert p.stdout is not None
        try:
            pump_lines(p.stdout, b"", tail, sys.stdout.buffer)
            rc = p.wait()
        finally:
            if p.stdin is not None:     # the login node's sign to stop the step
                p.stdin.close()
        if rc == 255 and self.login is not None:
            raise self.login.unreachable(b"".join(tail).decode(errors="replace"))
        if rc != 0:
            raise setup_failed(nodes[0], rc, tail)

    def prepare_job(self, nodes: list[NodeInfo], job_id: int, run: str,
                    envs: Callable[[NodeInfo], dict]) -> JobHandle:
        """The job's files: its script, the node wrapper, its step's launcher (run.sh,
        which the daemon's runner starts on this host) and its environment (0600)."""
        d = self._dir_of(nodes)
        jobdir = f"{d}/jobs/{job_id}"
        local = Path(nodes[0].path) / "jobs" / str(job_id)
        here = Here(self.settings, {})
        # Fresh: nothing left passes for this job. (Without a login node both are one.)
        self.place.remove(jobdir)
        here.remove(str(local))
        here.make_dirs(str(local))
        self.place.make_dirs(jobdir)
        self.place.write(f"{jobdir}/task.sh", run)
        wrapper = f"{jobdir}/node.sh"
        self.place.write(wrapper, scripts.node_wrapper("SKYPILOT_", f"{d}/{WORKDIR}",
                                                       f"{jobdir}/task.sh"))
        argv = scripts.step_argv(self.settings, nodes[0].allocation, len(nodes), step_name(job_id))
        env = self._step_env(envs(nodes[0]))
        if self.login is None:
            here.write(str(local / "run.sh"), scripts.launcher(argv, wrapper))
            here.write(str(local / "env.sh"), env_script(env))
        else:
            self.place.write(f"{jobdir}/step-env.sh", env_script(env))
            self.place.write(f"{jobdir}/step.sh", scripts.login_step(
                argv, wrapper, f"{d}/{WORKDIR}", f"{jobdir}/step-env.sh"))
            here.write(str(local / "run.sh"), self.login.step_launcher(
                str(local / ".stdin"), f"exec bash {jobdir}/step.sh"))
            here.write(str(local / "env.sh"), "")
        # One runner (the step's srun client, or its ssh, on this host) serves every node.
        return JobHandle(nodes=[NodeProc(rank=0, pid=0, start=0, jobdir=str(local),
                                         log=str(local / "run.log"))])

    def _step_env(self, env: dict[str, str]) -> dict[str, str]:
        """A step's environment: the task's, with what Slurm's commands need; the GPUs a
        step sees are Slurm's to say (it sets CUDA_VISIBLE_DEVICES on each node). On a
        login node, its own login environment (HOME, PATH, ...) stays."""
        if self.login is not None:
            mine = privilege.login_env(self.uid)
            env = {k: v for k, v in env.items() if not (k in HOST_ONLY and mine.get(k) == v)}
            if self.settings.slurm_conf:
                env["SLURM_CONF"] = self.settings.slurm_conf
        else:
            env = self.settings.env(env)
        env.pop("CUDA_VISIBLE_DEVICES", None)
        return env

    def stop_jobs(self, nodes: list[NodeInfo], handles: list[JobHandle]) -> None:
        """SIGTERM to each job's runner: its srun (or the ssh to the login node's) ends
        the step on every node."""
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
        self.allocator.release(cluster)
        self.place.remove(self.cluster_dir(cluster.name))
        Here(self.settings, {}).remove(str(self.local_dir(cluster.name)))
