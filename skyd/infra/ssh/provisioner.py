"""The ssh infra's worker side: a node's directories on its host, files copied with
rsync, setup streamed back, and each job's script, environment and runner put in place
(run as the cluster's owner: the worker already is them)."""

from __future__ import annotations

import secrets
import shlex
import subprocess
from pathlib import Path
from typing import Callable, Mapping

import msgspec

from skyd.infra.base import JobHandle, NodeProc, Provisioner, run_streamed
from skyd.infra.ssh.connection import SshClient, last_lines, unreachable, where
from skyd.infra.ssh.scripts import RUNNER, env_script, kill_script, tethered
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError

RSYNC_TIMEOUT = 3600


def setup_failed(n: NodeInfo, rc: int, tail: list[bytes]) -> SkydError:
    last = b"".join(tail).decode(errors="replace").rstrip()
    return SkydError(ErrorCode.FAILED,
                     f"setup failed on node {n.rank} ({where(n)}) with exit status {rc}",
                     f"last lines of output:\n{last}" if last else "")


class SshProvisioner(Provisioner):
    def __init__(self, client: SshClient) -> None:
        self.client = client

    def provision(self, state_dir: str, cluster: ClusterRecord) -> list[NodeInfo]:
        def prepare(n: NodeInfo) -> NodeInfo:
            out = self.client.run(n, f"umask 077 && mkdir -p {n.path}/sky_workdir {n.path}/jobs && "
                                     "chmod 700 .skyd && nproc && "
                                     "awk '/MemTotal/ {print $2 * 1024}' /proc/meminfo").split()
            return msgspec.structs.replace(n, cpus=float(out[-2]), memory_bytes=int(float(out[-1])))
        return self.client.each(cluster.nodes, prepare)

    def _rsync(self, node: NodeInfo, src: str, dst: str) -> None:
        source = Path(src).expanduser()
        if not source.exists():
            raise SkydError(ErrorCode.INVALID_TASK, f"{src} does not exist")
        owner = self.client.owner(node)
        opts = self.client.ssh_options(node, owner.control_dir if owner else None)
        shell = " ".join(shlex.quote(o) for o in ["ssh", *opts])
        s = str(source) + ("/" if source.is_dir() else "")
        host = f"[{node.ip}]" if ":" in node.ip else node.ip
        try:
            p = subprocess.run(["rsync", "-a", "-e", shell, "--", s,
                                f"{node.user}@{host}:{dst}"],
                               capture_output=True, timeout=RSYNC_TIMEOUT,
                               **(owner.popen() if owner else {}))
        except FileNotFoundError:
            raise SkydError(ErrorCode.FAILED, "rsync is not installed on the server",
                            "install it: apt-get install rsync") from None
        if p.returncode != 0:
            raise SkydError(ErrorCode.FAILED, f"copying {src} to {where(node)} failed "
                            f"(rsync exit status {p.returncode})", last_lines(p.stderr))

    def sync_workdir(self, nodes: list[NodeInfo], src: str) -> None:
        if not Path(src).expanduser().is_dir():
            raise SkydError(ErrorCode.INVALID_TASK, f"workdir {src} does not exist or is not a directory")
        self.client.each(nodes, lambda n: self._rsync(n, src, f"{n.path}/sky_workdir/"))

    def sync_file_mounts(self, nodes: list[NodeInfo], mounts: Mapping[str, str]) -> None:
        for target, src in mounts.items():
            dst = target if target.startswith("/") else f"{target.removeprefix('~/')}"
            parent = str(Path(dst).parent)

            def mount(n: NodeInfo, src: str = src, dst: str = dst, parent: str = parent) -> None:
                self.client.run(n, f"mkdir -p -- {shlex.quote(parent)}")
                self._rsync(n, src, dst)
            self.client.each(nodes, mount)

    def run_setup(self, nodes: list[NodeInfo], script: str,
                  envs: Callable[[NodeInfo], dict]) -> None:
        def start(n: NodeInfo) -> subprocess.Popen:
            owner = self.client.owner(n)
            p = subprocess.Popen(self.client.ssh(n, "bash -s", owner), stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 **(owner.popen() if owner else {}))
            assert p.stdin is not None
            # stdin stays open while the setup runs: its end is the node's sign to stop it.
            p.stdin.write((env_script(envs(n)) + f"cd {n.path}/sky_workdir\n"
                           + tethered(script)).encode())
            p.stdin.flush()
            return p
        for n, rc, tail in run_streamed(nodes, start):
            if rc == 255:
                raise unreachable(n, b"".join(tail))
            raise setup_failed(n, rc, tail)

    def prepare_job(self, nodes: list[NodeInfo], job_id: int, run: str,
                    envs: Callable[[NodeInfo], dict]) -> JobHandle:
        def prepare(n: NodeInfo) -> NodeProc:
            # A fresh job dir: what a failed teardown left there must not pass for this job.
            # env.sh (0600) lives until the runner has read it.
            eof = "SKYD_" + secrets.token_hex(8)
            script = (f"set -e\njobdir=$HOME/{n.path}/jobs/{job_id}\nrm -rf \"$jobdir\"\n"
                      "umask 077\nmkdir -p \"$jobdir\"\n"
                      f"cat > \"$jobdir/run.sh\" <<'{eof}'\n{run}\n{eof}\n"
                      f"cat > \"$jobdir/env.sh\" <<'{eof}'\n{env_script(envs(n))}{eof}\n"
                      f"cat > \"$jobdir/runner.sh\" <<'{eof}'\n{RUNNER}\n{eof}\n"
                      "echo \"$jobdir\"\n")
            jobdir = self.client.run(n, script).split()[-1]
            return NodeProc(rank=n.rank, pid=0, start=0, jobdir=jobdir, log=f"{jobdir}/run.log")
        return JobHandle(nodes=self.client.each(nodes, prepare))

    def stop_jobs(self, nodes: list[NodeInfo], handles: list[JobHandle]) -> None:
        by_rank = {n.rank: n for n in nodes}
        for h in handles:
            procs = {np.rank: np for np in h.nodes}

            def stop(n: NodeInfo, procs: dict[int, NodeProc] = procs) -> str:
                return self.client.run(n, kill_script(procs[n.rank], True))
            self.client.each([by_rank[r] for r in procs if r in by_rank], stop)

    def teardown(self, state_dir: str, cluster: ClusterRecord) -> None:
        def remove(n: NodeInfo) -> None:
            try:
                self.client.run(n, f"rm -rf {n.path}; rmdir .skyd/{cluster.name} 2>/dev/null; true")
            except SkydError as e:
                print(f"warning: could not clean {where(n)}: {e.message}", flush=True)
        self.client.each(cluster.nodes, remove)
