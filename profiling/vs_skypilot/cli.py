"""The run: set up outside (SkyPilot's venv, skyd's), re-run inside the namespace, then
each run each server in turn; the tables, the notes and the raw JSON."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import profiling.vs_skypilot as package
from profiling._daemon import ROOT
from profiling._report import code_version, machine_info, stop_on_signal
from profiling._venv import user_install
from profiling.vs_skypilot.config import DEFAULT_VENV, GiB, NETNS_FLAG, SKYPILOT_VERSION, Config
from profiling.vs_skypilot.prepare import ensure_skypilot, enter_netns
from profiling.vs_skypilot.sessions import run_server
from profiling.vs_skypilot.tables import notes, table


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m profiling.vs_skypilot", description=package.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs (default 3; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="1 run, shorter levels")
    ap.add_argument("--burst", type=int, default=20, help="async long requests per burst")
    ap.add_argument("--burst-cap", type=int, default=50, help="never more than this many")
    ap.add_argument("--mem-cap-gib", type=float, default=12.0, help="memory guard per server")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="SkyPilot's virtualenv")
    ap.add_argument("--only", default="skyd,SkyPilot", help="which servers")
    ap.add_argument("--no-netns", action="store_true", help="do not enter a network namespace")
    ap.add_argument("--prepared", help=argparse.SUPPRESS)     # set by the outer process
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "vs_skypilot.json"))
    args = ap.parse_args(argv)
    cfg = Config(args)
    servers = [s for s in ("skyd", "SkyPilot") if s in args.only.split(",")]

    if args.prepared is None:
        # Outside: install (needs the registry), then re-run inside the namespace.
        root = Path(tempfile.mkdtemp(prefix="skyvs-", dir="/tmp"))
        try:
            prep = {"skypilot": ensure_skypilot(args.venv) if "SkyPilot" in servers else None,
                    "skyd": user_install(root / "user")}
            if not prep["skyd"]["ok"]:
                raise RuntimeError(f"cannot install skyd in a venv: {prep['skyd'].get('reason')}")
            (root / "prepared.json").write_text(json.dumps(prep))
            inner = [*argv, "--prepared", str(root)]
            if not args.no_netns:
                rc = enter_netns(inner)
                if rc is not None:
                    return rc
            return main(inner)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    if os.environ.get(NETNS_FLAG) == "1":       # a new namespace's loopback starts down
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
        # 46580 lies in the default ephemeral range: a health poll could then connect to
        # itself (source port = destination port) and hold the server's port. The range
        # is the namespace's own.
        Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("50000 60999")
    root = Path(args.prepared)
    prep = json.loads((root / "prepared.json").read_text())
    signal.signal(signal.SIGTERM, stop_on_signal)
    res: dict[str, Any] = {
        "machine": machine_info(), "code": code_version(), "skypilot": prep.get("skypilot"),
        "config": vars(cfg), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_start": os.getloadavg(), "netns": os.environ.get(NETNS_FLAG) == "1",
        "interfaces": [name for _, name in socket.if_nameindex()], "runs": []}
    if args.burst > args.burst_cap:
        print(f"burst capped at {args.burst_cap} (asked {args.burst})", flush=True)
    print(f"skyd vs SkyPilot {SKYPILOT_VERSION}: {cfg.runs} run(s); interfaces "
          f"{res['interfaces']}; load average {res['loadavg_start']}", flush=True)
    t_all = time.perf_counter()
    limit = int((cfg.mem_cap_gib + 2) * GiB)
    try:
        for run in range(cfg.runs):
            one: dict[str, Any] = {}
            res["runs"].append(one)
            for who in servers:
                print(f"[run {run + 1}/{cfg.runs}] {who}", flush=True)
                one[who] = run_server(who, run, cfg, root, prep, limit)
    finally:
        res["elapsed_s"] = time.perf_counter() - t_all
        res["loadavg_end"] = os.getloadavg()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=str))
    print()
    print(table(res))
    n = notes(res)
    if n:
        print("\n" + n)
    print(f"\n{res['elapsed_s']:.0f} s; load average at end {res['loadavg_end']}; raw: {out}")
    return 0
