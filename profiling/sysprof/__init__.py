"""CPU and memory of a running skyd, by kind of process, sampled over time.

    python -m profiling.sysprof [--pid DAEMON_PID | --socket PATH] [--interval 0.2]
                                [--duration S] [--csv FILE] [--png FILE]

Samples every --interval seconds until Ctrl-C (SIGINT), SIGTERM, --duration, or the daemon
exits; then prints a summary in the shape of SkyPilot's sys_profiling.py (duration;
baseline = the first sample; peaks and delta; memory per long worker and per short
request; averages) and writes every sample as CSV (one row per sample and kind); with
--png, it also plots memory and CPU over time as a PNG (with matplotlib, an optional extra:
pip install 'skyd[profiling]').

Kinds, from the position in the process tree and the command, never from guessing:

  daemon            the daemon's pid (given, or ServerInfo.pid from ApiInfo on --socket)
  forkserver        the daemon's child whose command line runs multiprocessing.forkserver
  resource_tracker  the daemon's child running multiprocessing.resource_tracker
  long worker       a child of the forkserver that is running a request: its pid is named
                    by "[skyd] running <op> in worker process <pid>" in a request log
                    (<state>/logs/requests/<id>.log, which the daemon writes when it hands
                    the request over), or it has children of its own
  spare worker      a child of the forkserver that is neither: an idle pre-forked spare
  worker child      a descendant of a worker (setup commands, rsync, ssh...)
  job runner        every process of a session whose leader runs
                    <state>/clusters/.../runner.sh (a detached job and its processes,
                    wherever they were reparented)
  other             any other descendant of the daemon

Memory is USS (memory unique to the process, psutil memory_full_info), RSS where USS
cannot be read; "machine" is the whole machine (psutil). CPU is in cores (1.0 = one core
busy), from /proc/<pid>/stat between samples; the machine's CPU is also shown in percent
of all its CPUs, as SkyPilot does.

Memory per short request is an estimate: short requests are coroutines in the daemon, so
it is (daemon peak - daemon baseline) / the peak number of short requests running at
once, as ApiInfo's short_running reports (needs the socket). Most short requests finish
within one turn of the daemon's event loop, so short_running is often 0 at every sample;
then there is no estimate (profiling.calibrate divides by its number of clients instead).
"""

# The package: processes.py (the process tree by kind), sampling.py (Samples over time),
# report.py (the summary and the CSV), plot.py (the PNG, with matplotlib), cli.py (the command).

from profiling.sysprof.cli import main, resolve_target, state_dir_of
from profiling.sysprof.plot import PlotUnavailable, plot_png
from profiling.sysprof.processes import (DAEMON, FORKSERVER, JOB_RUNNER, KINDS, LONG_WORKER, MACHINE, OTHER,
                                         SPARE_WORKER, TRACKER, WORKER_CHILD, LogIndex, ProcStat, classify,
                                         is_runner, scan_proc)
from profiling.sysprof.report import CSV_FIELDS, render_summary, summarize, write_csv
from profiling.sysprof.sampling import Proc, Sample, Sampler

__all__ = ["CSV_FIELDS", "DAEMON", "FORKSERVER", "JOB_RUNNER", "KINDS", "LONG_WORKER", "MACHINE", "OTHER",
           "SPARE_WORKER", "TRACKER", "WORKER_CHILD", "LogIndex", "PlotUnavailable", "Proc", "ProcStat",
           "Sample", "Sampler", "classify", "is_runner", "main", "plot_png", "render_summary",
           "resolve_target", "scan_proc", "state_dir_of", "summarize", "write_csv"]
