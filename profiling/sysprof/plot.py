"""Memory and CPU over time as a PNG, one line per kind of process, with matplotlib (an
optional extra: pip install 'skyd[profiling]'), imported only when a plot is asked for and
drawn by its Agg backend, without pyplot's global state."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from profiling.sysprof.processes import (DAEMON, FORKSERVER, JOB_RUNNER, KINDS, LONG_WORKER, MACHINE,
                                         OTHER, SPARE_WORKER, TRACKER, WORKER_CHILD)
from profiling.sysprof.sampling import Sample
from skyd.sizing.units import MiB

INSTALL_HINT = "pip install 'skyd[profiling]'"

# matplotlib's default cycle ("tab10"), one fixed colour per kind in every plot
COLORS = {MACHINE: "tab:gray", DAEMON: "tab:blue", FORKSERVER: "tab:orange", TRACKER: "tab:purple",
          LONG_WORKER: "tab:red", SPARE_WORKER: "tab:green", WORKER_CHILD: "tab:pink",
          JOB_RUNNER: "tab:brown", OTHER: "tab:cyan"}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):
        return False


def plot_png(samples: list[Sample], path: Path, cpus: int) -> None:
    """Memory (MiB) and CPU (cores) over time, one line per kind; the machine's memory as
    its change from the first sample. Raises PlotUnavailable without matplotlib."""
    try:
        import matplotlib  # noqa: F401 - fails here, with the hint, when it is missing
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotUnavailable(f"matplotlib is not installed: {INSTALL_HINT}") from e
    kinds = [k for k in KINDS if any(s.procs.get(k) for s in samples)]
    t = [s.t for s in samples]
    base_used = samples[0].machine_mem_used if samples else 0
    mem = {MACHINE: [max(0, s.machine_mem_used - base_used) / MiB for s in samples],
           **{k: [s.mem(k) / MiB for s in samples] for k in kinds}}
    cpu = {MACHINE: [s.machine_cpu_percent / 100 * cpus for s in samples],
           **{k: [s.cpu(k) for s in samples] for k in kinds}}
    fig = Figure(figsize=(10, 7.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_mem, ax_cpu = fig.subplots(2, 1, sharex=True)
    for ax, series, title in ((ax_mem, mem, "Memory (MiB): USS, RSS where unreadable"),
                              (ax_cpu, cpu, f"CPU (cores; the machine has {cpus})")):
        for name, ys in series.items():
            label = "machine (memory: change since start)" if name == MACHINE else name
            ax.plot(t, ys, label=label, color=COLORS.get(name, "black"), linewidth=1.5)
        ax.set_title(title, loc="left")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ax_cpu.set_xlabel("time (s)")
    ax_cpu.set_xlim(left=0)
    ax_mem.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
