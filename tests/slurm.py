"""A real Slurm cluster (one node, or several) on loopback, for testing the `slurm` infra.

`SlurmCluster` starts Debian's `munged`, `slurmctld` and `slurmd` without systemd, each
with its files in one temporary directory: a private munge key and socket, a minimal
slurm.conf (`select/cons_tres`, `proctrack/linuxproc`, `task/none`, and
`batch_sched_delay=0`: stock Slurm starts batch jobs only every ~3 s), one node `node1`
at 127.0.0.1 with this machine's CPUs, and a GRES of two fake GPUs (device files like /dev/null);
with `nodes=N`, N such nodes (node<i> at 127.0.0.<i>, one slurmd each on this host, each
on a port of its own). Nothing of the system's own Slurm or munge configuration is read
or touched: every Slurm command finds this cluster through `SLURM_CONF` (see `env`).

    with SlurmCluster(Path(tempfile.mkdtemp(prefix="skyd-slurm-", dir="/tmp"))) as slurm:
        subprocess.run(["sbatch", "--wrap", "true"], env=slurm.env(), check=True)

or, in a test, the `slurm_cluster` fixture (`slurm_two_nodes`: two nodes; one of each per
session; skipped when Slurm is not installed unless the CI environment variable is set).
Run this file to start one by hand: `python3 tests/slurm.py [NODES]` prints the
SLURM_CONF to export and waits for Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

DAEMONS = {"munged": "/usr/sbin/munged", "slurmctld": "/usr/sbin/slurmctld",
           "slurmd": "/usr/sbin/slurmd"}
COMMANDS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")
START_TIMEOUT = 20.0
NODE = "node1"
PARTITION = "debug"
FAKE_GPUS = 2           # gres gpu:fake:2, each a character device like /dev/null
NODE_PATTERN = "%n"     # Slurm's node name in slurm.conf's per-slurmd file names


class SlurmUnavailable(RuntimeError):
    """Slurm or munge is not installed or cannot run here."""


def missing_tools() -> list[str]:
    missing = [path for path in DAEMONS.values() if not os.access(path, os.X_OK)]
    missing += [cmd for cmd in COMMANDS if shutil.which(cmd) is None]
    return missing


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SlurmCluster:
    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int = 4000,
                 nodes: int = 1):
        """`cpus`: what node1 offers (default this host's; more is taken on trust:
        SlurmdParameters=config_overrides, for benchmarks of many small allocations).
        `nodes`: how many nodes (slurmd daemons on this host, see _node_lines); each
        offers `cpus`, `memory_mb` and the fake GPUs."""
        self.root = root
        self.nodes = [f"node{i + 1}" for i in range(nodes)]
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.conf = root / "slurm.conf"
        self.run_dir = root / "run"            # the munge socket: every user must reach it
        self.munge_socket = self.run_dir / "munge.sock"
        self.procs: dict[str, int] = {}        # daemon name -> pid (from its pid file)

    # ---- set-up ------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment for Slurm commands on this cluster (the test's and the daemon's)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_files(self) -> None:
        root = self.root
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o755, exist_ok=True)
        os.chmod(root, 0o755)
        key = root / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, slurmd_port, *node_ports = _free_ports(2 + len(self.nodes))
        # Fake GPUs: character devices like /dev/null (major 1, minor 3), so that Slurm
        # binds each to a job by index and sets CUDA_VISIBLE_DEVICES as it would for real ones.
        devices = []
        for i in range(FAKE_GPUS):
            dev = root / f"fakegpu{i}"
            if not dev.exists():
                os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            devices.append(str(dev))
        (root / "gres.conf").write_text(
            "".join(f"NodeName={node} Name=gpu Type=fake File={d}\n"
                    for node in self.nodes for d in devices))
        for node in self.nodes if len(self.nodes) > 1 else []:
            (root / "spool" / node).mkdir(mode=0o700, exist_ok=True)
        self.conf.write_text("\n".join([
            "ClusterName=skydtest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}{'/%n' if len(self.nodes) > 1 else ''}",
            f"SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.run_dir / self._slurmd_file(NODE_PATTERN, 'pid')}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / self._slurmd_file(NODE_PATTERN, 'log')}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=batch_sched_delay=0",
            "MpiDefault=none",
            "ReturnToService=2",
            *(["SlurmdParameters=config_overrides"] if self.cpus > (os.cpu_count() or 1) else []),
            "GresTypes=gpu",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MinJobAge=60",
            "MailProg=/bin/true",
            *self._node_lines(node_ports),
            f"PartitionName={PARTITION} Nodes={','.join(self.nodes)} Default=YES "
            "MaxTime=INFINITE State=UP",
            "",
        ]))

    def _node_lines(self, ports: list[int]) -> list[str]:
        """slurm.conf's nodes. One: node1 at 127.0.0.1 on SlurmdPort. Several: one slurmd
        each on this host, told apart by address (node<i> at 127.0.0.<i>, so that each
        has an IP of its own) and by port (a slurmd listens on every address)."""
        shape = (f"CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:fake:{FAKE_GPUS} "
                 "State=UNKNOWN")
        if len(self.nodes) == 1:
            return [f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname={NODE} {shape}"]
        return [f"NodeName={node} NodeAddr={self.address(node)} NodeHostname={node} "
                f"Port={port} {shape}" for node, port in zip(self.nodes, ports)]

    def address(self, node: str) -> str:
        """A node's NodeAddr (what the slurm infra gives as its IP)."""
        return f"127.0.0.{self.nodes.index(node) + 1}"

    def _slurmd_file(self, node: str, kind: str) -> str:
        """A slurmd's pid or log file name: one per node when there are several."""
        return f"slurmd.{kind}" if len(self.nodes) == 1 else f"slurmd-{node}.{kind}"

    def _start_daemon(self, name: str, args: list[str], pid_file: Path) -> None:
        pid_file.unlink(missing_ok=True)
        out = subprocess.run([DAEMONS[name.split(":")[0]], *args], env=self.env(),
                             capture_output=True, text=True, timeout=START_TIMEOUT)
        if out.returncode != 0:
            raise SlurmUnavailable(f"{name} did not start (exit {out.returncode}): "
                                   f"{(out.stderr or out.stdout).strip()[-400:]}")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                self.procs[name] = int(pid_file.read_text().split()[0])
                return
            except (OSError, ValueError, IndexError):
                time.sleep(0.05)
        raise SlurmUnavailable(f"{name} wrote no pid file {pid_file}: see {self.root / 'log'}")

    def start(self) -> "SlurmCluster":
        missing = missing_tools()
        if missing:
            raise SlurmUnavailable(f"cannot start a test Slurm cluster: {', '.join(missing)} "
                                   "not found (apt-get install slurm-wlm munge)")
        self._write_files()
        munge = self.root / "munge"
        # -f: munged refuses key and log files not owned by its own user otherwise; the
        # files are root's and private to this directory.
        self._start_daemon("munged", [f"--key-file={munge / 'key'}", f"--socket={self.munge_socket}",
                                      f"--pid-file={munge / 'pid'}", f"--log-file={munge / 'log'}",
                                      f"--seed-file={munge / 'seed'}", "-f"], munge / "pid")
        self._start_daemon("slurmctld", ["-i"], self.run_dir / "slurmctld.pid")
        for node in self.nodes:
            self._start_daemon(self._slurmd(node), ["-N", node],
                               self.run_dir / self._slurmd_file(node, "pid"))
        self.wait_idle()
        return self

    def _slurmd(self, node: str) -> str:
        """The slurmd of `node`, as `procs` names it."""
        return "slurmd" if node == NODE else f"slurmd:{node}"

    def wait_idle(self, timeout: float = START_TIMEOUT) -> None:
        """Until every node is up and idle: the cluster accepts and starts work."""
        deadline = time.monotonic() + timeout
        state = ""
        nodes = ",".join(self.nodes)
        while time.monotonic() < deadline:
            out = self.run(["sinfo", "-h", "-n", nodes, "-o", "%T"], check=False)
            state = out.stdout.strip()
            if out.returncode == 0 and state and all(
                    s in ("idle", "mixed", "allocated") for s in state.split()):
                return
            time.sleep(0.1)
        raise SlurmUnavailable(f"node {nodes} is not up after {timeout:g}s (state {state!r}); "
                               f"see {self.root / 'log'}")

    # ---- use -----------------------------------------------------------------------------

    def run(self, argv: list[str], check: bool = True, user: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess:
        """A Slurm command on this cluster, as root or (with `user`) as that user."""
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        return subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                              check=check, timeout=timeout)

    def jobs(self) -> list[dict[str, str]]:
        """Every job Slurm knows: id, user, state, name, reason."""
        out = self.run(["squeue", "-h", "-a", "-t", "all", "-o", "%i|%u|%T|%j|%r"])
        rows = []
        for line in out.stdout.splitlines():
            jid, user, state, name, reason = line.split("|", 4)
            rows.append({"id": jid, "user": user, "state": state, "name": name, "reason": reason})
        return rows

    def cancel_all(self) -> None:
        self.run(["scancel", "-p", PARTITION], check=False)

    def stop_controller(self) -> None:
        """slurmctld goes away (SIGTERM: it saves its state); slurmd and munged stay."""
        self._stop("slurmctld")

    def start_controller(self) -> None:
        """slurmctld again, from its saved state (the jobs it had go on)."""
        self._start_daemon("slurmctld", [], self.run_dir / "slurmctld.pid")
        self.wait_idle()

    # ---- tear-down -----------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job, then stop the daemons we started (by pid), slurmd first."""
        if "slurmctld" in self.procs:
            self.cancel_all()
        for name in (*map(self._slurmd, self.nodes), "slurmctld", "munged"):
            self._stop(name)

    def _stop(self, name: str) -> None:
        pid = self.procs.pop(name, None)
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def counting_bin(directory: Path) -> tuple[Path, Path]:
    """A bin_dir of Slurm's commands that each log one line (`PARENT_PID COMMAND TIME`)
    before running the real one: how many Slurm commands skyd issues, who issued them and
    when. (bin dir, log file)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "calls.log"
    log.touch()
    os.chmod(log, 0o666)                 # workers run as their users
    os.chmod(directory, 0o755)
    for cmd in COMMANDS:
        real = shutil.which(cmd)
        wrapper = directory / cmd
        wrapper.write_text(f'#!/bin/bash\necho "$PPID {cmd} $EPOCHREALTIME" >> {log}\n'
                           f'exec {real} "$@"\n')
        os.chmod(wrapper, 0o755)
    return directory, log


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One real Slurm cluster for the session (starting one takes well under a second; its
    jobs are cancelled between tests by whoever started them). Skips when Slurm is not
    installed, unless $CI is set: CI installs it, so there it must run."""
    yield from _session_cluster(nodes=1)


@pytest.fixture(scope="session")
def slurm_two_nodes() -> Iterator[SlurmCluster]:
    """As `slurm_cluster`, with two nodes (node1 at 127.0.0.1, node2 at 127.0.0.2): two
    slurmd daemons on this host."""
    yield from _session_cluster(nodes=2)


def _session_cluster(nodes: int) -> Iterator[SlurmCluster]:
    root = Path(tempfile.mkdtemp(prefix="skyd-slurm-", dir="/tmp"))
    cluster = SlurmCluster(root, nodes=nodes)
    try:
        try:
            cluster.start()
        except SlurmUnavailable as e:
            cluster.stop()
            if os.environ.get("CI"):
                raise
            pytest.skip(str(e))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # Stopped by Ctrl-C or SIGTERM (a background job ignores SIGINT): the cluster goes too.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="skyd-slurm-", dir="/tmp"))
    with SlurmCluster(root, nodes=int(sys.argv[1]) if len(sys.argv) > 1 else 1) as cluster:
        print(f"export SLURM_CONF={cluster.conf}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    sys.exit(0)
