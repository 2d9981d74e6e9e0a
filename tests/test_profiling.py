"""profiling/: sysprof (samples by kind of process, summary, CSV, PNG), loadtest and
calibrate, against real daemons; and their arithmetic on samples built here."""

from __future__ import annotations

import csv
import json
import struct
import subprocess
import sys

import pytest

from conftest import ROOT, _env, wait_until
from profiling import calibrate, sysprof
from profiling.sysprof import Proc, Sample
from skyd import protocol
from skyd.sizing.calibration import load_calibration
from skyd.sizing.units import KiB, MiB
from skyd.taskspec import Task


def run_tool(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"profiling.{module}", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(), cwd=str(ROOT))


def _sample(t, cpu, used, daemon_uss, workers=(), short=None, daemon_rss=40 * MiB):
    procs = {sysprof.DAEMON: [Proc(1, 0.1, daemon_rss, daemon_uss)]}
    if workers:
        procs[sysprof.LONG_WORKER] = [Proc(pid, 0.0, 30 * MiB, uss) for pid, uss in workers]
    return Sample(t=t, machine_cpu_percent=cpu, machine_mem_used=used, machine_mem_percent=used / MiB / 100,
                  procs=procs, short_running=short)


SAMPLES = [
    _sample(0.0, 10.0, 1000 * MiB, 20 * MiB, short=0),
    _sample(0.2, 50.0, 1100 * MiB, 22 * MiB, workers=[(101, 4 * MiB), (102, 6 * MiB)], short=10),
    _sample(0.4, 30.0, 1050 * MiB, 21.5 * MiB, workers=[(101, 5 * MiB)], short=5),
]


# ---- arithmetic ------------------------------------------------------------------------------

def test_summary_baseline_peaks_deltas_and_averages():
    s = sysprof.summarize(SAMPLES, cpus=2)
    assert s["samples"] == 3 and s["duration_s"] == pytest.approx(0.4)
    assert s["baseline"]["cpu_percent"] == 10.0 and s["baseline"]["mem_used"] == 1000 * MiB
    assert s["baseline"]["daemon_mem"] == 20 * MiB
    assert s["peak"]["cpu_percent"] == 50.0 and s["peak"]["mem_used"] == 1100 * MiB
    assert s["peak"]["mem_delta"] == 100 * MiB
    assert s["peak"]["daemon_mem"] == 22 * MiB and s["peak"]["daemon_mem_delta"] == 2 * MiB
    assert s["average"]["cpu_percent"] == pytest.approx(30.0)
    assert s["average"]["mem_used"] == pytest.approx(1050 * MiB)
    lw = s["long_worker"]
    assert lw["peak_mem"] == 6 * MiB and lw["avg_mem"] == pytest.approx(5 * MiB)
    assert lw["seen"] == 2 and lw["peak_concurrent"] == 2 and lw["uss"]
    sr = s["short_request"]
    assert sr["peak_concurrent"] == 10
    assert sr["peak_mem_estimate"] == pytest.approx(2 * MiB / 10)            # (22-20)/10
    assert sr["avg_mem_estimate"] == pytest.approx((2 * MiB / 10 + 1.5 * MiB / 5) / 2)
    k = s["kinds"][sysprof.LONG_WORKER]
    assert k["peak_processes"] == 2 and k["peak_mem"] == 10 * MiB and k["avg_mem"] == 7.5 * MiB
    text = sysprof.render_summary(s, 0.2)
    for heading in ("MONITORING SUMMARY", "BASELINE USAGE", "PEAK USAGE", "Memory Delta: 100 MiB",
                    "Peak memory per long worker: 6 MiB", "Peak memory per short request",
                    "(estimate)", "AVERAGE USAGE", "Average CPU: 30.0%"):
        assert heading in text, heading


def test_summary_falls_back_to_rss_and_says_when_short_concurrency_is_unknown():
    samples = [_sample(0, 1.0, 10 * MiB, None), _sample(1, 2.0, 10 * MiB, None)]
    samples[1].procs[sysprof.LONG_WORKER] = [Proc(7, 0.0, 9 * MiB, None)]
    s = sysprof.summarize(samples)
    assert s["baseline"]["daemon_mem"] == 40 * MiB                            # RSS
    assert s["long_worker"]["peak_mem"] == 9 * MiB and not s["long_worker"]["uss"]
    assert s["short_request"] is None and not s["short_running_known"]
    assert "needs the daemon's socket" in sysprof.render_summary(s)
    with pytest.raises(ValueError):
        sysprof.summarize([])


def test_calibration_headroom_and_floors():
    assert calibrate.with_headroom(8 * MiB, calibrate.LONG_FLOOR) == 10 * MiB
    assert calibrate.with_headroom(1 * MiB, calibrate.LONG_FLOOR) == 4 * MiB     # floor
    assert calibrate.with_headroom(10 * KiB, calibrate.SHORT_FLOOR) == 64 * KiB  # floor
    assert calibrate.with_headroom(100 * KiB, calibrate.SHORT_FLOOR) == 125 * KiB
    assert calibrate.with_headroom(3, 1) == 4                                      # rounds up
    v = calibrate.derive(3.8 * MiB, 8000.5, 33 * MiB)
    assert v == {"long_worker_bytes": int(4.75 * MiB), "short_request_bytes": 64 * KiB,
                 "daemon_base_bytes": 33 * MiB}
    assert calibrate.derive(20 * MiB, 1 * MiB, 0)["daemon_base_bytes"] > 0       # never 0
    # the raw figures from phases of samples: short = (peak - baseline) / requests in flight,
    # the largest of: the clients, the sampled short_running peak, the daemon's short_peak
    idle = [_sample(0, 1, MiB, 20 * MiB)]
    long = SAMPLES[1:]
    short = [_sample(1, 1, MiB, 20 * MiB), _sample(2, 1, MiB, 20.5 * MiB, short=4)]
    raw = calibrate.phase_figures(idle, long, short, clients=2)
    assert raw["long_worker_peak"] == 6 * MiB and raw["daemon_idle_rss"] == 40 * MiB
    assert raw["short_request_peak"] == pytest.approx(0.5 * MiB / 4)
    raw = calibrate.phase_figures(idle, long, short, clients=50)
    assert raw["short_peak_concurrency"] == 50
    assert raw["short_request_peak"] == pytest.approx(0.5 * MiB / 50)
    raw = calibrate.phase_figures(idle, long, short, clients=2, short_peak=10)
    assert raw["short_peak_concurrency"] == 10


def test_classify_by_tree_position_and_command():
    P = sysprof.ProcStat
    root = ("/s/clusters/",)
    procs = {10: P(1, 10, 0, 1), 11: P(10, 10, 0, 1), 12: P(10, 10, 0, 1), 13: P(10, 10, 0, 1),
             14: P(13, 10, 0, 1), 20: P(11, 10, 0, 1), 21: P(11, 10, 0, 1), 22: P(11, 10, 0, 1),
             30: P(21, 10, 0, 1), 40: P(10, 40, 0, 1), 41: P(40, 40, 0, 1), 50: P(1, 50, 0, 1),
             60: P(1, 60, 0, 1)}
    cmds = {11: ["python", "-c", "from multiprocessing.forkserver import main; main()"],
            12: ["python", "-c", "from multiprocessing.resource_tracker import main;main(9)"],
            13: ["sleep", "9"],
            40: ["sh", "/s/clusters/c/node-0/jobs/1/runner.sh", "/s/clusters/c/node-0/jobs/1"],
            50: ["sh", "/elsewhere/clusters/c/jobs/1/runner.sh"],
            60: ["sh", "/s/clusters/c/node-0/jobs/2/runner.sh"]}
    kinds = sysprof.classify(procs, 10, lambda pid: cmds.get(pid, ["x"]), root, logged_workers={20})
    assert kinds[10] == sysprof.DAEMON and kinds[11] == sysprof.FORKSERVER
    assert kinds[12] == sysprof.TRACKER and kinds[13] == kinds[14] == sysprof.OTHER
    assert kinds[20] == sysprof.LONG_WORKER          # named by a request log
    assert kinds[21] == sysprof.LONG_WORKER          # has a child
    assert kinds[22] == sysprof.SPARE_WORKER
    assert kinds[30] == sysprof.WORKER_CHILD
    assert kinds[40] == kinds[41] == kinds[60] == sysprof.JOB_RUNNER   # reparented or not
    assert 50 not in kinds                           # another state dir's runner


def test_png_plot_makes_a_valid_png(tmp_path):
    path = tmp_path / "plot.png"
    sysprof.plot_png(SAMPLES, path, cpus=2)
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert struct.unpack(">II", data[16:24]) == (1000, 720)
    assert data.endswith(b"IEND\xaeB`\x82")


def test_png_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)         # import matplotlib fails
    with pytest.raises(sysprof.PlotUnavailable, match=r"pip install 'skyd\[profiling\]'"):
        sysprof.plot_png(SAMPLES, tmp_path / "plot.png", cpus=2)
    assert not (tmp_path / "plot.png").exists()


# ---- against real daemons --------------------------------------------------------------------

def test_sysprof_samples_a_daemon_running_a_long_request(daemon, workdir):
    rid = daemon.submit_async(protocol.Launch(task=Task(setup="sleep 2"), cluster="prof"))
    log = daemon.state_dir / "logs" / "requests" / f"{rid}.log"
    assert wait_until(lambda: log.exists() and b"worker process" in log.read_bytes(), 10)
    csv_path, png_path = workdir / "s.csv", workdir / "s.png"
    p = run_tool("sysprof", "--socket", str(daemon.socket), "--duration", "3", "--csv", str(csv_path),
                 "--png", str(png_path))
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader(csv_path.open()))
    kinds = {r["kind"] for r in rows}
    assert {"machine", "daemon", "forkserver", "long worker"} <= kinds, kinds
    assert len({r["t_s"] for r in rows}) >= 10                   # ~15 samples in 3 s
    worker = [r for r in rows if r["kind"] == "long worker"]
    assert all(0 < int(r["max_process_mem_bytes"]) < 200 * MiB for r in worker)
    png = png_path.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    for heading in ("MONITORING SUMMARY", "Duration:", "BASELINE USAGE", "Baseline CPU:",
                    "PEAK USAGE", "Peak CPU:", "Peak Memory:", "Memory Delta:",
                    "MEMORY PER LONG WORKER", "Peak memory per long worker:",
                    "Average memory per long worker:", "MEMORY PER SHORT REQUEST",
                    "AVERAGE USAGE", "Average CPU:", "Average Memory:"):
        assert heading in p.stdout, (heading, p.stdout)
    assert daemon.wait_request(rid).status is protocol.Status.SUCCEEDED


def test_loadtest_api_status_json(daemon):
    p = run_tool("loadtest", "--socket", str(daemon.socket), "--api", "api_status", "-n", "5",
                 "--duration", "1", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    (r,) = out["results"]
    assert r["kind"] == "api_status" and r["clients"] == 5
    assert r["count"] > 0 and r["errors"] == 0
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]


@pytest.mark.timeout(150)   # calibrate itself may take 120 s
def test_calibrate_writes_a_file_skyd_accepts(daemon, workdir):
    out = workdir / "cal.json"
    p = run_tool("calibrate", "--socket", str(daemon.socket), "--out", str(out), "--duration", "1",
                 "--launches", "2", "--setup-sleep", "1", "--clients", "10", "--idle", "0.5",
                 timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    calib = load_calibration(out)
    assert calib.source == str(out)
    assert 1 * MiB <= calib.long_worker_bytes <= 200 * MiB
    assert calib.short_request_bytes >= 64 * KiB
    assert 1 * MiB <= calib.daemon_base_bytes <= 1024 * MiB
    data = json.loads(out.read_text())
    assert {"measured_at", "machine", "raw"} <= set(data)
    assert data["raw"]["long_worker_peak"] > 0
    assert "uses it" in p.stdout and "DEFAULT LONG" in p.stdout
    assert daemon.call(protocol.ClusterStatus()) == []           # its clusters are gone
