"""Figures `launch` and `exec`: a trivial task launched on a new cluster (local, and on
one ssh host with its ControlMaster warm or closed first), Submit -> Result -> the job's
first output, each phase timed; and `exec` on a warm cluster."""

from __future__ import annotations

from pathlib import Path

from profiling._daemon import BenchDaemon
from profiling._report import agg, markdown
from profiling.bench_clusters.harness import (PHASES, Config, close_masters, control_sockets, down, fmt,
                                              follow, launch_task, med, phases)
from skyd.protocol import Exec, Launch
from skyd.taskspec import Resources, Task


def bench_launch(cfg: Config, d: BenchDaemon, workdir: Path, run: int) -> dict:
    samples: dict[str, list[dict]] = {"local": [], "ssh": [], "ssh_cold": []}
    infra = {"local": "local", "ssh": "ssh/one", "ssh_cold": "ssh/one"}
    order = [k for _ in range(cfg.launch_samples) for k in ("local", "ssh")]
    order.insert(1, "ssh_cold")     # right after a local one: masters closed explicitly anyway
    for i, kind in enumerate(order):
        name = f"l{run}-{kind.replace('_', '')}-{i}"
        masters_before = len(control_sockets(d))
        closed = close_masters(d) if kind == "ssh_cold" else None
        s = follow(d, Launch(task=launch_task(workdir, infra[kind]), cluster=name))
        s["phases_ms"] = phases(s["ms"])
        s["masters_closed"] = closed
        s["masters_before"] = masters_before
        s.pop("log", None)
        samples[kind].append(s)
        down(d, name)
    for kind, ss in samples.items():
        tot = med([s["phases_ms"]["total (Submit -> first output)"] for s in ss])
        print(f"  [launch] run {run + 1} {kind}: Submit -> first output median {tot:.1f} ms; "
              + ", ".join(f"{k} {med([s['phases_ms'].get(k) for s in ss]):.1f}"
                          for k, _, _ in PHASES), flush=True)
    return samples


def bench_exec(cfg: Config, d: BenchDaemon, run: int) -> dict:
    warm = {"local": f"wl{run}", "ssh": f"ws{run}"}
    infra = {"local": "local", "ssh": "ssh/one"}
    for kind, name in warm.items():
        task = Task(name="warm", run="echo hi", resources=Resources(infra=infra[kind]))
        follow(d, Launch(task=task, cluster=name))
    samples: dict[str, list[dict]] = {"local": [], "ssh": []}
    for _ in range(cfg.exec_samples):
        for kind, name in warm.items():
            s = follow(d, Exec(task=Task(name="hi", run="echo hi"), cluster=name))
            s.pop("log", None)
            ms = s["ms"]
            s["phases_ms"] = {"Submit -> Result": ms["result"],
                              "Result -> first output": ms["first_output"] - ms["result"],
                              "total (Submit -> first output)": ms["first_output"],
                              "job end": ms["job_end"]}
            samples[kind].append(s)
    for name in warm.values():
        down(d, name)
    for kind, ss in samples.items():
        print(f"  [exec] run {run + 1} {kind}: Submit -> first output median "
              f"{med([s['ms']['first_output'] for s in ss]):.1f} ms (Submit -> Result "
              f"{med([s['ms']['result'] for s in ss]):.1f})", flush=True)
    return samples


def tables(res: dict) -> list[str]:
    """Markdown of launch's phases and of exec, where measured."""
    out: list[str] = []
    runs = res.get("launch", [])
    if runs:
        kinds = [("local", "local"), ("ssh", "ssh, 1 host, masters warm"),
                 ("ssh_cold", "ssh, 1 host, no master (first use / after 120 s idle)")]
        rows_names = [n for n, _, _ in PHASES] + ["total (Submit -> first output)",
                                                   "job end (skyctl exits)"]
        figs = {}
        for kind, _ in kinds:
            figs[kind] = {r: agg([med([s["phases_ms"].get(r) for s in run[kind]]) for run in runs])
                          for r in rows_names}
        out += ["### launch: Submit -> Result -> first output (ms; median of per-run medians, "
                "min–max of the runs)", "",
                markdown(["phase"] + [label for _, label in kinds],
                         [[r] + [fmt(figs[k][r]) for k, _ in kinds] for r in rows_names])]
        for kind, label in kinds:
            ph = {n: figs[kind][n]["median"] for n, _, _ in PHASES}
            top = max(ph, key=lambda k: ph[k] or 0)
            tot = figs[kind]["total (Submit -> first output)"]["median"]
            out += [f"- dominant ({label}): {top}, {ph[top]:.1f} ms of {tot:.1f} ms "
                    f"({100 * ph[top] / tot:.0f} %)"]
        out += [""]
    runs = res.get("exec", [])
    if runs:
        rows = []
        for kind in ("local", "ssh"):
            for r in ("Submit -> Result", "Result -> first output",
                      "total (Submit -> first output)", "job end"):
                rows.append([kind, r, fmt(agg([med([s["phases_ms"][r] for s in run[kind]])
                                               for run in runs]))])
        out += ["### exec on a warm cluster (ms)", "",
                markdown(["infra", "step", "median (min–max)"], rows), ""]
    return out
