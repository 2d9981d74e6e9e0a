"""What every part of the side-by-side benchmark shares: SkyPilot's version, where its venv
lives, the port, and the sizes of a run."""

from __future__ import annotations

import argparse
from pathlib import Path

SKYPILOT_VERSION = "0.14.1"
DEFAULT_VENV = Path.home() / ".cache" / "skyd-bench" / f"skypilot-{SKYPILOT_VERSION}"
PORT = 46580
URL = f"http://127.0.0.1:{PORT}"
NETNS_FLAG = "SKYD_BENCH_IN_NETNS"
GiB = 2**30
TASK_YAML = "name: burst\nrun: echo hello from the burst\n"


class Config:
    def __init__(self, args: argparse.Namespace):
        quick = args.quick
        self.runs = args.runs or (1 if quick else 3)
        self.levels = [1, 10, 50]
        # SkyPilot's latency at 50 clients is ~10-20 s: a shorter window sees no request
        # that started and ended inside it.
        self.warmup = 2.0
        self.duration = 10.0 if quick else 20.0
        self.cli_reps = {"skyd": 10 if quick else 20, "SkyPilot": 3 if quick else 5}
        self.burst = min(args.burst, args.burst_cap)
        self.burst_requested = args.burst
        self.mem_cap_gib = args.mem_cap_gib
        # SkyPilot starts its daemons' workers for ~10 s after it answers
        self.settle = {"skyd": 1.0, "SkyPilot": 15.0}
        self.drain_timeout = 300.0
