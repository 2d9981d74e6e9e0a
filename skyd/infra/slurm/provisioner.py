"""The slurm infra's worker side, run as the cluster's owner: a cluster is one allocation
(allocate.py: found or submitted as the owner, waited for, its nodes read); its files
live in the owner's home, which the nodes share, so one copy serves every node. Setup
runs as one `srun` step on every node, streamed to the request's log; a job is prepared
as files — its script, the node wrapper, its step's launcher (run.sh) and its environment
— that the daemon's runner starts. Down cancels the allocation and removes the files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

from skyd import privilege
from skyd.infra.base import JobHandle, NodeProc, Provisioner, pump_lines
from skyd.infra.local.processes import alive, signal_job
from skyd.infra.local.provisioner import WORKDIR, env_script, setup_failed
from skyd.infra.slurm import scripts
from skyd.infra.slurm.allocate import Allocator, allocation_shapes
from skyd.infra.slurm.allocation import step_name
from skyd.infra.slurm.commands import Slurm, not_found
from skyd.infra.slurm.settings import SlurmSettings
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError
from skyd.taskspec import Task

STOP_GRACE = 5.0            # seconds for a job's srun to end its step after SIGTERM
REQUEST_FILE = "allocation.json"   # what the allocation asks for (to submit it again on start)


class SlurmProvisioner(Provisioner):
    """`task`: the task being launched (None for start: the allocation is asked for as
    the launch asked, from the cluster's files)."""

    def __init__(self, settings: SlurmSettings, uid: int, task: Task | None = None):
        self.settings = settings
        self.uid = uid
        self.user, _gid, self.home, _shell = privilege.identity(uid)
        self.task = task
        self.slurm = Slurm(settings, privilege.login_env(uid))
        self.allocator = Allocator(self.slurm, uid, self.user)

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
        return self.allocator.allocate(cluster, d, state_dir, shapes)

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
        self.allocator.release(cluster)
        shutil.rmtree(self.cluster_dir(cluster.name), ignore_errors=True)
