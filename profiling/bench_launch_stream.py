"""A synchronous launch's first job line: seconds from `skyctl launch -c NEW "echo hi"`'s
start (on the `local` infra) until `hi` is on its stdout, and until it exits.

    python -m profiling.bench_launch_stream --old /tmp/old-tree [--runs N] [--out FILE.json]

`--old` is another checkout (e.g. `git archive HEAD | tar -x -C /tmp/old-tree`): its own
skyctl against its own daemon, beside this tree's; runs alternate between the two trees
(the order swapped every round), each with a fresh cluster, in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from profiling._daemon import ROOT, BenchDaemon, kill_leftovers, with_pycache
from profiling._stats import summarize

LINE_TIMEOUT = 60.0


class TreeDaemon(BenchDaemon):
    """A daemon run from `tree`'s code (and a skyctl from the same tree beside it)."""

    def __init__(self, root: Path, name: str, tree: Path, pycache: str):
        super().__init__(root, name, pycache=pycache)
        self.tree = tree
        self.cwd = str(tree)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
        env.update(PYTHONPATH=str(self.tree), NO_COLOR="1")
        return with_pycache(env, self.pycache)

    def launch(self, cluster: str) -> tuple[float, float]:
        """One synchronous launch: (seconds to its first stdout line, seconds to its exit)."""
        env = dict(self.env(), SKYD_HOST=self.host)
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "skyctl", "launch", "-y", "-c", cluster,
                              "echo hi"], cwd=self.tree, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL)
        assert p.stdout is not None
        line = p.stdout.readline()
        first = time.perf_counter() - t0
        p.stdout.read()
        code = p.wait(LINE_TIMEOUT)
        if line != b"hi\n" or code != 0:
            raise RuntimeError(f"{self.tree}: launch gave {line!r}, exit {code}")
        return first, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", type=Path, required=True, help="the checkout to compare with")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="skls-", dir="/tmp"))
    trees = {"before": args.old.resolve(), "after": ROOT}
    daemons = {k: TreeDaemon(root, k, t, str(root / f"pyc-{k}")) for k, t in trees.items()}
    samples: dict[str, dict[str, list[float]]] = {k: {"first_line": [], "exit": []}
                                                  for k in trees}
    try:
        for d in daemons.values():
            d.start()
        for k, d in daemons.items():          # warm-up: bytecode caches, first cluster
            d.launch("warm")
        for i in range(args.runs):
            order = list(daemons) if i % 2 == 0 else list(reversed(daemons))
            for k in order:
                first, total = daemons[k].launch(f"c{i}")
                samples[k]["first_line"].append(first)
                samples[k]["exit"].append(total)
    finally:
        sessions = set()
        for d in daemons.values():
            sessions |= d.sessions
            d.stop()
        kill_leftovers(root, sessions)
        shutil.rmtree(root, ignore_errors=True)
    report = {k: {m: summarize(sorted(xs)) for m, xs in v.items()} for k, v in samples.items()}
    print("| tree | first line p50 (ms) | min | max | exit p50 (ms) | runs |")
    print("|---|---|---|---|---|---|")
    for k, r in report.items():
        f, e = r["first_line"], r["exit"]
        print(f"| {k} | {f['p50'] * 1e3:.0f} | {f['min'] * 1e3:.0f} | {f['max'] * 1e3:.0f} "
              f"| {e['p50'] * 1e3:.0f} | {f['n']} |")
    if args.out:
        args.out.write_text(json.dumps({"summary": report, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
