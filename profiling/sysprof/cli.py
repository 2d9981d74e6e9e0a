"""The command line: find the daemon (its pid, state dir and socket), sample it until told
to stop, then the summary, the CSV and, with --png, the plot."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import psutil

import profiling.sysprof as package
from profiling.sysprof.plot import INSTALL_HINT, PlotUnavailable, have_matplotlib, plot_png
from profiling.sysprof.report import render_summary, summarize, write_csv
from profiling.sysprof.sampling import Sampler
from skyctl.connection import Connection, ServerError, Unreachable
from skyd import protocol


def state_dir_of(pid: int) -> Path | None:
    """The daemon's state dir from its command line (--state-dir), else its environment."""
    try:
        p = psutil.Process(pid)
        argv = p.cmdline()
    except psutil.Error:
        return None
    for i, a in enumerate(argv):
        if a == "--state-dir" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if a.startswith("--state-dir="):
            return Path(a.split("=", 1)[1])
    try:
        env = p.environ()
    except psutil.Error:
        env = {}
    if env.get("SKYD_STATE_DIR"):
        return Path(env["SKYD_STATE_DIR"])
    base = env.get("XDG_STATE_HOME") or (str(Path(env["HOME"]) / ".local" / "state")
                                         if env.get("HOME") else None)
    return Path(base) / "skyd" if base else None


def resolve_target(pid: int | None, socket: str | None) -> tuple[int, Path | None, str | None, str]:
    """(daemon pid, state dir, socket or None, how it was found)."""
    if pid is None:
        if socket is None:
            from skyctl.endpoint import resolve
            socket = resolve(None)[0]
        with Connection(str(socket), "sysprof", timeout=5.0).connect() as c:
            info = c.call(protocol.ApiInfo())
        return info.pid, Path(info.state_dir), str(socket), f"ApiInfo on {socket}"
    if not psutil.pid_exists(pid):
        raise ValueError(f"no process {pid}")
    state = state_dir_of(pid)
    if socket is None and state is not None and (state / "skyd.sock").exists():
        try:      # the same daemon's socket, if it answers with this pid: short_running too
            with Connection(str(state / "skyd.sock"), "sysprof", timeout=2.0).connect() as c:
                if c.call(protocol.ApiInfo()).pid == pid:
                    socket = str(state / "skyd.sock")
        except (Unreachable, ServerError, OSError):
            pass
    return pid, state, socket, f"pid {pid}"


class _StopOnSignal:
    def __init__(self, stop: threading.Event):
        self.stop = stop
        self.old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.old[sig] = signal.signal(sig, lambda *_: self.stop.set())
        return self

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m profiling.sysprof", description=package.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    who = ap.add_mutually_exclusive_group()
    who.add_argument("--pid", type=int, help="the daemon's pid")
    who.add_argument("--socket", help="the daemon's socket (default: as skyctl finds it)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between samples")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ap.add_argument("--csv", default=f"bench-results/sysprof-{stamp}.csv", help="samples (CSV)")
    ap.add_argument("--png", metavar="FILE", help="also plot memory and CPU over time (PNG; needs "
                    "matplotlib: " + INSTALL_HINT + ")")
    args = ap.parse_args(argv)
    if args.interval <= 0 or (args.duration is not None and args.duration <= 0):
        ap.error("--interval and --duration must be positive")
    if args.png and not have_matplotlib():        # say so now, not after the sampling
        print(f"sysprof: --png needs matplotlib: {INSTALL_HINT}", file=sys.stderr)
        return 2
    socket = args.socket
    if socket and socket.startswith("unix://"):
        socket = socket[len("unix://"):]
    try:
        pid, state_dir, socket, how = resolve_target(args.pid, socket)
    except (Unreachable, ServerError, ValueError, OSError) as e:
        print(f"sysprof: cannot find the daemon: {e}", file=sys.stderr)
        return 4
    sampler = Sampler(pid, state_dir, socket)
    stop = threading.Event()
    print(f"Monitoring skyd pid {pid} ({how}; state dir {state_dir}) every {args.interval:g} s"
          + (f" for {args.duration:g} s" if args.duration else "") + "... (Press Ctrl+C to stop)",
          file=sys.stderr, flush=True)
    with _StopOnSignal(stop):
        try:
            samples = sampler.run(args.interval, args.duration, stop)
        finally:
            sampler.close()
    if not samples:
        print("sysprof: no samples (the daemon exited?)", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - sampler.t0
    note = f"Daemon: pid {pid}, state dir {state_dir}" + (
        " (it exited: sampling stopped)" if sampler.daemon_gone else "")
    print(render_summary(summarize(samples, sampler.cpus, elapsed), args.interval, note))
    rows = write_csv(samples, Path(args.csv), sampler.cpus)
    if not args.png:
        print(f"samples: {args.csv} ({rows} rows)")
        return 0
    try:
        plot_png(samples, Path(args.png), sampler.cpus)
    except PlotUnavailable as e:
        print(f"samples: {args.csv} ({rows} rows); no plot: {e}", file=sys.stderr)
        return 2
    print(f"samples: {args.csv} ({rows} rows); plot: {args.png}")
    return 0
