"""The run: three sshd hosts on loopback, one daemon whose node pools they are, the chosen
figures run after run, everything stopped; then the tables and the raw JSON."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import profiling.bench_clusters as package
from profiling._daemon import BenchDaemon, kill_leftovers, ours
from profiling._report import code_version, stop_on_signal
from profiling.bench_clusters import burst, launch, ssh_cost
from profiling.bench_clusters.harness import Config, down, follow, launch_task, machine_info, make_workdir
from skyd import protocol
from skyd.protocol import Launch
from tests.sshd import SshHosts


def tables(res: dict) -> str:
    """Every measured figure's tables, in the order of the module's docstring."""
    return "\n".join([*launch.tables(res), *burst.tables(res), *ssh_cost.tables(res)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.bench_clusters", description=package.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs per figure (default 5; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="2 runs and smaller counts")
    ap.add_argument("--out", default="bench-results/clusters.json", help="raw results JSON")
    ap.add_argument("--only", default="launch,exec,burst,ssh",
                    help="which benchmarks, e.g. launch,ssh")
    args = ap.parse_args(argv)
    cfg = Config(args.runs or (2 if args.quick else 5), args.quick)
    only = {s.strip() for s in args.only.split(",")}
    signal.signal(signal.SIGTERM, stop_on_signal)
    if os.geteuid() != 0:
        print("needs root: the ssh hosts log in as a throw-away user", file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="skc-", dir="/tmp"))
    ssh_base = Path(tempfile.mkdtemp(prefix="skc-ssh-", dir="/tmp"))
    workdir = make_workdir(root / "workdir", cfg.workdir_files)
    meta: dict[str, Any] = {
        "machine": machine_info(), "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "runs": cfg.runs, "quick": cfg.quick,
        "config": vars(cfg), "root": str(root), "ssh_base": str(ssh_base),
        "code_start": code_version(),
        "workdir_files": sum(1 for p in workdir.rglob("*") if p.is_file()),
        "workdir_bytes": sum(p.stat().st_size for p in workdir.rglob("*") if p.is_file())}
    print(f"skyd cluster benchmarks: {cfg.runs} run(s); temp dirs {root} {ssh_base}; "
          f"load average {meta['loadavg_start']}; code {meta['code_start']}", flush=True)
    t_all = time.perf_counter()
    res: dict[str, list] = {k: [] for k in ("launch", "exec", "burst_local", "burst_ssh_cold",
                                            "burst_ssh", "ssh")}
    d: BenchDaemon | None = None
    hosts = SshHosts(ssh_base, count=3)
    try:
        with hosts:
            meta["ssh_user"] = hosts.user
            meta["ssh_home_files"] = sorted(os.listdir(ssh_base / "home")) \
                if (ssh_base / "home").exists() else None
            pools = root / "pools.yaml"
            pools.write_text(hosts.pool_yaml("one", [hosts[0]]) + hosts.pool_yaml("p"))
            d = BenchDaemon(root, "d", ["--node-pools", str(pools),
                                        "--ssh-known-hosts", str(hosts.known_hosts)])
            d.start()
            info = d.call(protocol.ApiInfo())
            meta["long_slots"], meta["short_slots"] = info.long_slots, info.short_slots
            # warm-up (untimed): one launch per infra, so that no sample pays first-use costs
            for kind, infra in (("local", "local"), ("ssh", "ssh/one")):
                follow(d, Launch(task=launch_task(workdir, infra), cluster=f"warm-{kind}"))
                down(d, f"warm-{kind}")
            for r in range(cfg.runs):
                if "launch" in only:
                    res["launch"].append(launch.bench_launch(cfg, d, workdir, r))
                if "exec" in only:
                    res["exec"].append(launch.bench_exec(cfg, d, r))
                if "burst" in only:
                    res["burst_local"].append(burst.bench_burst_local(cfg, d, workdir, r))
                    res["burst_ssh_cold"].append(burst.bench_burst_ssh(cfg, d, workdir, r, True))
                    res["burst_ssh"].append(burst.bench_burst_ssh(cfg, d, workdir, r, False))
                if "ssh" in only:
                    res["ssh"].append(ssh_cost.bench_ssh_cost(cfg, hosts, root / "cm", workdir,
                                                              str(hosts.known_hosts), r))
            d.stop()
            kill_leftovers(d.state_dir, d.sessions)
    finally:
        if d is not None:
            try:
                d.stop(timeout=10)
            except Exception:  # noqa: BLE001 - keep cleaning up
                pass
        sessions = d.sessions if d is not None else set()
        meta["leftovers_killed"] = len(kill_leftovers(root, sessions))
        meta["processes_remaining"] = ours(root, sessions) + ours(ssh_base, set())
        meta["sshd_alive_after"] = [h.ip for h in hosts.hosts if h.alive()]
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(ssh_base, ignore_errors=True)
        meta["loadavg_end"] = os.getloadavg()
        meta["elapsed_s"] = time.perf_counter() - t_all
        meta["code_end"] = code_version()
        meta["code_changed_during_run"] = (meta["code_end"]["sources_sha256"]
                                           != meta["code_start"]["sources_sha256"])
    text = tables(res)
    c = meta["code_start"]
    text += (f"\nload average at start {tuple(round(x, 2) for x in meta['loadavg_start'])}, at end "
             f"{tuple(round(x, 2) for x in meta['loadavg_end'])}; {meta['elapsed_s']:.0f} s; "
             f"leftover processes killed at the end: {meta['leftovers_killed']}, remaining: "
             f"{len(meta['processes_remaining'])}; sshd alive after: {meta['sshd_alive_after']}\n"
             f"code: git {c['head']}{' + local changes' if c['dirty'] else ''}, skyd+skyctl "
             f"sources sha256 {c['sources_sha256']}")
    if meta["code_changed_during_run"]:
        text += (f"\nWARNING: skyd/skyctl sources changed during the run ({c['sources_sha256']} -> "
                 f"{meta['code_end']['sources_sha256']}); figures mix versions")
    print(text, flush=True)
    out = Path(args.out)
    if not out.is_absolute():
        out = Path.cwd() / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": res, "tables": text}, indent=1,
                              default=str))
    print(f"raw results: {out}", flush=True)
    return 0
