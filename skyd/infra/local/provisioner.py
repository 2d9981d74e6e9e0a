"""The local infra's worker side: a cluster's nodes are sandbox directories on this host
(`<state>/clusters/<name>/node-<rank>`, the task's workdir in `sky_workdir/`), made,
filled and removed as the cluster's owner."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping

from skyd import privilege
from skyd.infra.base import JobHandle, NodeProc, Provisioner, run_streamed
from skyd.infra.local.processes import job_outcome, mark_cancelled, signal_job
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError

LOCAL_IP = "127.0.0.1"
WORKDIR = "sky_workdir"
STOP_GRACE = 3.0          # seconds between SIGTERM and SIGKILL when stopping jobs


def cluster_root(state_dir: str | Path) -> Path:
    return Path(state_dir) / "clusters"


def cluster_dir(state_dir: str | Path, name: str) -> Path:
    return cluster_root(state_dir) / name


def prepare_cluster_dir(state_dir: str | Path, cluster: ClusterRecord, uid: int, gid: int) -> Path:
    """Run before the worker drops privileges: the sandbox belongs to the cluster's owner.
    A new cluster (no nodes yet) always gets a fresh directory; an existing one keeps its
    own, and only if it still is a directory of this owner."""
    root = cluster_root(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)     # owners reach their own cluster; nobody lists the others
    if not cluster.nodes:
        privilege.discard_user_tree(root, cluster.name)
    return privilege.make_user_dir(root, cluster.name, uid, gid)


def env_script(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def setup_failed(n: NodeInfo, rc: int, tail: list[bytes]) -> SkydError:
    last = b"".join(tail).decode(errors="replace").rstrip()
    return SkydError(ErrorCode.FAILED,
                     f"setup failed on node {n.rank} ({n.host}) with exit status {rc}",
                     f"last lines of output:\n{last}" if last else "")


def _copy(source: Path, dst: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, dst, dirs_exist_ok=True, symlinks=True)
    else:
        shutil.copy2(source, dst)


class LocalProvisioner(Provisioner):
    def provision(self, state_dir: str, cluster: ClusterRecord) -> list[NodeInfo]:
        nodes = []
        for rank in range(cluster.num_nodes):
            path = cluster_dir(state_dir, cluster.name) / f"node-{rank}"
            (path / WORKDIR).mkdir(parents=True, exist_ok=True)
            (path / "jobs").mkdir(exist_ok=True)
            nodes.append(NodeInfo(rank=rank, ip=LOCAL_IP, host="local", path=str(path)))
        return nodes

    def sync_workdir(self, nodes: list[NodeInfo], src: str) -> None:
        source = Path(src).expanduser()
        if not source.is_dir():
            raise SkydError(ErrorCode.INVALID_TASK, f"workdir {src} does not exist or is not a directory")
        for n in nodes:
            _copy(source, Path(n.path) / WORKDIR)

    def sync_file_mounts(self, nodes: list[NodeInfo], mounts: Mapping[str, str]) -> None:
        """Copy local paths onto each node; targets are relative to the node (or ~)."""
        for target, src in mounts.items():
            source = Path(src).expanduser()
            if not source.exists():
                raise SkydError(ErrorCode.INVALID_TASK, f"file_mounts: source {src} does not exist")
            for n in nodes:
                dst = Path(n.path) / target.lstrip("/").removeprefix("~/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                _copy(source, dst)

    def run_setup(self, nodes: list[NodeInfo], script: str,
                  envs: Callable[[NodeInfo], dict]) -> None:
        """Run setup on every node at once; fail with where and how if any node fails."""
        failures = run_streamed(nodes, lambda n: subprocess.Popen(
            ["bash", "-c", script], cwd=Path(n.path) / WORKDIR, env=envs(n),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        if failures:
            raise setup_failed(*failures[0])

    def prepare_job(self, nodes: list[NodeInfo], job_id: int, run: str,
                    envs: Callable[[NodeInfo], dict]) -> JobHandle:
        """The job's files on each node: its script and its environment (0600: it may
        hold secrets); the daemon starts the runner (skyd.infra.local.jobrunner)."""
        procs = []
        for n in nodes:
            jobdir = Path(n.path) / "jobs" / str(job_id)
            shutil.rmtree(jobdir, ignore_errors=True)   # fresh: nothing left passes for this job
            jobdir.mkdir(parents=True, exist_ok=True)
            (jobdir / "run.sh").write_text(run)
            fd = os.open(jobdir / "env.sh", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(env_script(envs(n)))
            procs.append(NodeProc(rank=n.rank, pid=0, start=0, jobdir=str(jobdir),
                                  log=str(jobdir / "run.log")))
        return JobHandle(nodes=procs)

    def stop_jobs(self, nodes: list[NodeInfo], handles: list[JobHandle]) -> None:
        for h in handles:
            mark_cancelled(h)
            signal_job(h, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline and any(job_outcome(h) is None for h in handles):
            time.sleep(0.05)
        for h in handles:
            signal_job(h, signal.SIGKILL)

    def teardown(self, state_dir: str, cluster: ClusterRecord) -> None:
        """As the cluster's owner (the worker runs as them): remove its nodes. The emptied
        directory itself is removed by the daemon, which owns its parent."""
        try:
            privilege.rmtree_owned(cluster_dir(state_dir, cluster.name))
        except OSError as e:
            raise SkydError(ErrorCode.FAILED, f"teardown of cluster {cluster.name!r} did not "
                            f"finish: {e}", "remove what blocks it, then run down again") from None
