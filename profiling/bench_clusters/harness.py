"""What the cluster figures share: their sizes, the markers of a launch's phases, following
one request as skyctl does, `down`, the ssh ControlMasters, and formatting a figure."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import msgspec

from profiling._daemon import BenchDaemon, bounded_wait
from profiling._report import machine_info as base_machine_info
from skyctl.connection import Connection
from skyd import protocol
from skyd.protocol import Accepted, Chunk, ClusterStatus, Down, Error, JobLogs, LaunchResult, Result
from skyd.taskspec import Resources, Task

MARKERS = [("provision", re.compile(rb"Provisioning cluster")),
           ("sync", re.compile(rb"Syncing workdir")),
           ("setup", re.compile(rb"Running setup")),
           ("setup_done", re.compile(rb"Setup done\.")),
           ("job_submitted", re.compile(rb"Job \d+ submitted"))]
# phase name -> (from mark, to mark): consecutive, so they add up to the total
PHASES = [("queue + worker start", "sent", "provision"),
          ("provision", "provision", "sync"),
          ("sync workdir", "sync", "setup"),
          ("setup", "setup", "setup_done"),
          ("submit job", "setup_done", "job_submitted"),
          ("job submitted -> Result", "job_submitted", "result"),
          ("job start (Result -> first output)", "result", "first_output")]
SAMPLE_TIMEOUT = 60.0       # per frame read; a launch here takes well under a second


class Config:
    def __init__(self, runs: int, quick: bool):
        self.runs = runs
        self.quick = quick
        self.launch_samples = 2 if quick else 5          # per run and infra (warm)
        self.exec_samples = 4 if quick else 10           # per run and infra
        self.burst_local = 20
        self.ssh_samples = 8 if quick else 20            # per run and ssh command kind
        self.workdir_files = 20


def med(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(a: dict, digits: int = 1, unit: str = " ms") -> str:
    if not a or a.get("median") is None:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(a['median'])}{unit} ({f.format(a['min'])}–{f.format(a['max'])})"


def machine_info() -> dict:
    info = base_machine_info()
    info["ssh"] = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    info["rsync"] = (subprocess.run(["rsync", "--version"], capture_output=True, text=True)
                     .stdout.splitlines()[0] if shutil.which("rsync") else "")
    return info


def make_workdir(path: Path, files: int) -> Path:
    """A small workdir: `files` files of 0.5-4 KiB, a few in a subdirectory."""
    (path / "pkg").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sub = path / "pkg" if i % 4 == 3 else path
        (sub / f"f{i:02d}.py").write_text(f"# file {i}\n" + "x = 1\n" * (80 + 90 * (i % 8)))
    return path


def launch_task(workdir: Path, infra: str) -> Task:
    return Task(name="hi", workdir=str(workdir), setup="true", run="echo hi",
                resources=Resources(infra=infra))


# ---- one request, followed as skyctl does -------------------------------------------------------

class Failed(RuntimeError):
    pass


def follow(d: BenchDaemon, op: protocol.Op, follow_job: bool = True,
           timeout: float = SAMPLE_TIMEOUT) -> dict:
    """Submit `op` with wait=True on one connection; stamp (perf_counter) the Accepted, the
    first arrival of each worker line, the Result; then, like `skyctl launch`, JobLogs
    (follow) of its job on the same connection: its first output chunk and its end."""
    t: dict[str, float] = {}
    buf = bytearray()
    out = {"t": t}
    with Connection(str(d.socket), "bench", timeout=timeout).connect() as c:
        t["sent"] = time.perf_counter()
        result = None
        for msg in c.submit(op, True):
            now = time.perf_counter()
            if isinstance(msg, Accepted):
                t["accepted"] = now
                out["request_id"] = msg.request_id
            elif isinstance(msg, Chunk):
                buf += msg.data
                for name, rx in MARKERS:
                    if name not in t and rx.search(buf):
                        t[name] = now
            elif isinstance(msg, Error):
                raise Failed(f"{type(op).__name__}: {msg.message}")
            elif isinstance(msg, Result):
                t["result"] = now
                result = msg
        if result is None or result.status is not protocol.Status.SUCCEEDED:
            raise Failed(f"{type(op).__name__} did not succeed: {result!r}\n"
                         f"{buf.decode(errors='replace')[-1500:]}")
        lr = msgspec.convert(result.value, LaunchResult)
        out["cluster"], out["job_id"] = lr.cluster, lr.job_id
        out["log"] = buf.decode(errors="replace")
        if follow_job and lr.job_id is not None:
            job_out = bytearray()
            for msg in c.submit(JobLogs(cluster=lr.cluster, job_id=lr.job_id, follow=True)):
                now = time.perf_counter()
                if isinstance(msg, Chunk):
                    t.setdefault("first_output", now)
                    job_out += msg.data
                elif isinstance(msg, Error):
                    raise Failed(f"JobLogs: {msg.message}")
                elif isinstance(msg, Result):
                    t["job_end"] = now
                    out["job_status"] = msgspec.convert(msg.value, protocol.JobRecord).status
            out["output"] = job_out.decode(errors="replace")
            # On ssh the log stream may end (the remote `tail --pid` saw the job exit) before
            # the daemon's watcher has recorded the job's end: the record is then RUNNING.
            if b"hi" not in job_out or out.get("job_status") not in ("SUCCEEDED", "RUNNING"):
                raise Failed(f"job {lr.job_id} on {lr.cluster}: {out.get('job_status')} "
                             f"output {bytes(job_out)!r}")
    out["ms"] = {k: (v - t["sent"]) * 1000 for k, v in t.items()}
    return out


def down(d: BenchDaemon, name: str, timeout: float = 60.0) -> None:
    with Connection(str(d.socket), "bench", timeout=timeout).connect() as c:
        frames = list(c.submit(Down(cluster=name), True))
    last = frames[-1]
    if not isinstance(last, Result) or last.status is not protocol.Status.SUCCEEDED:
        raise Failed(f"down {name}: {last!r}")


def clusters(d: BenchDaemon) -> list[str]:
    with Connection(str(d.socket), "bench", timeout=30).connect() as c:
        return [r.name for r in c.call(ClusterStatus())]


def phases(ms: dict) -> dict:
    out = {}
    for name, a, b in PHASES:
        if a in ms and b in ms:
            out[name] = ms[b] - ms[a]
    if "first_output" in ms:
        out["total (Submit -> first output)"] = ms["first_output"]
    if "job_end" in ms:
        out["job end (skyctl exits)"] = ms["job_end"]
    return out


# ---- ssh ControlMasters -----------------------------------------------------------------------

def control_sockets(d: BenchDaemon) -> list[Path]:
    base = d.state_dir / "ssh"
    return [p for p in base.glob("*/*") if p.is_socket()] if base.exists() else []


def close_masters(d: BenchDaemon) -> int:
    """`ssh -O exit` every ControlMaster of the daemon and its workers; wait until gone."""
    socks = control_sockets(d)
    for s in socks:
        subprocess.run(["ssh", "-o", f"ControlPath={s}", "-O", "exit", "x"],
                       capture_output=True, timeout=10)
    bounded_wait(lambda: not control_sockets(d), 5.0, 0.01)
    return len(socks)
