"""Figure `ssh`: the cost of one ssh command on this machine, over a fresh connection and
over the multiplexed ControlMaster (skyd's own ssh options): `true`, `bash -s` with a small
script, rsync of the workdir."""

from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

from profiling._report import agg, markdown
from profiling.bench_clusters.harness import Config, Failed, fmt
from skyd.protocol import NodeInfo
from tests.sshd import SshHosts


def bench_ssh_cost(cfg: Config, hosts: SshHosts, control_dir: Path, workdir: Path,
                   known_hosts: str, run: int) -> dict:
    from skyd.infra.ssh import SshClient
    control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh = SshClient(str(control_dir), known_hosts)
    h = hosts[0]
    node = NodeInfo(rank=0, ip=h.ip, host=f"{h.user}@{h.ip}:{h.port}", user=h.user, port=h.port,
                    identity_file=str(hosts.identity_file))
    mux = ssh.ssh_options(node)
    fresh = [("ControlMaster=no" if o == "ControlMaster=auto" else
              "ControlPath=none" if o.startswith("ControlPath=") else o) for o in mux]
    target = f"{h.user}@{h.ip}"
    script = "mkdir -p .skyd-bench/sky_workdir && chmod 700 .skyd-bench && nproc\n"
    rsync_e = " ".join(["ssh", *mux])

    def timed(argv: list[str], stdin: bytes | None = None) -> float:
        t = time.perf_counter()
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=30)
        dt = (time.perf_counter() - t) * 1000
        if p.returncode != 0:
            raise Failed(f"{argv[0]} -> {p.returncode}: {p.stderr.decode(errors='replace')[-400:]}")
        return dt

    kinds: dict[str, Callable[[], float]] = {
        "fresh: ssh host true": lambda: timed(["ssh", *fresh, target, "true"]),
        "fresh, KexAlgorithms=curve25519-sha256 (what-if): ssh host true":
            lambda: timed(["ssh", *fresh, "-o", "KexAlgorithms=curve25519-sha256", target, "true"]),
        "mux: ssh host true": lambda: timed(["ssh", *mux, target, "true"]),
        "mux: ssh host 'bash -s' (mkdir + nproc script)":
            lambda: timed(["ssh", *mux, target, "bash -s"], script.encode()),
        "mux: rsync -a of the 20-file workdir (unchanged)":
            lambda: timed(["rsync", "-a", "-e", rsync_e, f"{workdir}/",
                           f"{target}:.skyd-bench/sky_workdir/"]),
        "fresh: rsync -a of the 20-file workdir (unchanged)":
            lambda: timed(["rsync", "-a", "-e", " ".join(["ssh", *fresh]), f"{workdir}/",
                           f"{target}:.skyd-bench/sky_workdir/"]),
    }
    timed(["ssh", *mux, target, "bash -s"], script.encode())     # opens the master (untimed)
    for f in kinds.values():
        f()                                                       # one untimed warm-up each
    raw: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(cfg.ssh_samples):
        for k, f in kinds.items():          # interleaved: drift hits all alike
            raw[k].append(f())
    subprocess.run(["ssh", *mux, "-O", "exit", target], capture_output=True, timeout=10)
    print(f"  [ssh] run {run + 1}: " + "; ".join(f"{k} {statistics.median(v):.1f} ms"
                                                for k, v in raw.items()), flush=True)
    return raw


def tables(res: dict) -> list[str]:
    """Markdown of the ssh commands' costs, where measured."""
    out: list[str] = []
    runs = res.get("ssh", [])
    if runs:
        rows = [[k, fmt(agg([statistics.median(run[k]) for run in runs]))] for k in runs[0]]
        out += ["### one ssh command (ms)", "",
                markdown(["command", "median (min–max)"], rows), ""]
    return out
