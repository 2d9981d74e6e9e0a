"""profiling/bench.py (regenerating BENCHMARKS.md's tables), the side-by-side benchmark's
arithmetic (vs_skypilot), the memory box that holds a server under benchmark, and a real
burst of managed jobs through the load generator against a real daemon."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, _env, wait_until
from profiling import bench, vs_skypilot
from profiling._box import Box
from profiling._report import agg, fmt_agg
from profiling._stats import percentile, summarize
from skyd import protocol

DOC = """# Benchmarks

Hand-written prose that stays.

<!-- bench:capacity -->
old capacity table
<!-- /bench:capacity -->

Between the regions.

<!-- bench:jobs -->
old jobs table
<!-- /bench:jobs -->

<!-- bench:nosuch -->
kept as it is
<!-- /bench:nosuch -->
"""

CAPACITY = {"generated": "2026-11-23 10:00 UTC", "code": {"head": "abc1234", "dirty": ""},
            "calibration": {"source": "built-in defaults", "long_worker_bytes": 24 * 2**20,
                            "short_request_bytes": 512 * 2**10, "daemon_base_bytes": 64 * 2**20},
            "rows": [{"cpus": 4.0, "memory_bytes": 8 * 2**30, "memory": "8.0 GiB", "long": 64,
                      "short": 1024, "skypilot_long": 8, "skypilot_short": 11, "label": ""},
                     {"cpus": 2.0, "memory_bytes": 4 * 2**30, "memory": "4.0 GiB", "long": 32,
                      "short": 512, "skypilot_long": None, "skypilot_short": None,
                      "label": "this machine"}]}


def test_render_rewrites_only_known_regions_with_results(tmp_path):
    (tmp_path / "capacity.json").write_text(json.dumps(CAPACITY))
    new, skipped = bench.render(DOC, tmp_path)
    assert "Hand-written prose that stays." in new and "Between the regions." in new
    assert "old capacity table" not in new
    assert "| 4 | 8.0 GiB | 64 | 1024 | 8 | 11 | 8× / 93× |" in new
    assert "from `bench-results/capacity.json`: run 2026-11-23 10:00 UTC, code at git `abc1234`" in new
    # No jobs results: that region is kept and the skip says how to make them.
    assert "old jobs table" in new and "kept as it is" in new
    assert any(s.startswith("jobs: no bench-results/jobs.json") for s in skipped)
    assert any(s.startswith("nosuch: unknown region") for s in skipped)
    # Rendering again changes nothing: the markers survive.
    again, _ = bench.render(new, tmp_path)
    assert again == new


def test_render_summary_puts_skypilot_next_to_skyd(tmp_path):
    (tmp_path / "capacity.json").write_text(json.dumps(CAPACITY))
    runs = [{"skyd": {"cli_status_s": {"median": 0.040}, "start": {"until_answering_s": 0.15}},
             "SkyPilot": {"cli_status_s": {"median": 4.5}, "start": {"until_answering_s": 6.0}}},
            {"skyd": {"cli_status_s": {"median": 0.036}, "start": {"until_answering_s": 0.13}},
             "SkyPilot": {"cli_status_s": {"median": 4.1}, "start": {"until_answering_s": 7.0}}}]
    (tmp_path / "vs_skypilot.json").write_text(json.dumps({"runs": runs, "config": {"burst": 20}}))
    doc = "<!-- bench:summary -->\n<!-- /bench:summary -->\n"
    new, skipped = bench.render(doc, tmp_path)
    assert skipped == []
    row = next(ln for ln in new.splitlines() if ln.startswith("| `skyctl status`"))
    assert "4,300 ms (4,100–4,500)" in row
    start = next(ln for ln in new.splitlines() if ln.startswith("| start until answering"))
    assert "6,500 ms (6,000–7,000)" in start
    assert "| slots on 4 CPUs / 8 GiB (long / short) | ≥ 64 / ≥ 1,000 | 64 / 1024 |" in new


def test_bench_refuses_unknown_steps_and_a_doc_without_regions(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# nothing to generate\n")
    p = subprocess.run([sys.executable, "-m", "profiling.bench", "--only", "core,nosuch"],
                       capture_output=True, text=True, env=_env(), cwd=str(ROOT), timeout=60)
    assert p.returncode == 2 and "unknown step(s) ['nosuch']" in p.stderr
    p = subprocess.run([sys.executable, "-m", "profiling.bench", "--render-only", "--doc", str(doc),
                        "--results", str(tmp_path)],
                       capture_output=True, text=True, env=_env(), cwd=str(ROOT), timeout=60)
    assert p.returncode == 2 and "no <!-- bench:NAME --> regions" in p.stderr
    assert doc.read_text() == "# nothing to generate\n"


def test_vs_skypilot_figures_ratios_and_missing_values():
    def server(rps50, p99, idle):
        levels = [{"req_per_s": r, "latencies_ms_summary": {"p50": 1.0, "p99": p}}
                  for r, p in ((10, 1), (20, 2), (rps50, p99))]
        return {"short_second": {"levels": levels}, "idle": {"rss_mib": idle, "processes": 5}}

    runs = [{"skyd": server(50_000, 2.0, 100), "SkyPilot": server(8, 9000, 1200)},
            {"skyd": server(40_000, 3.0, 120), "SkyPilot": server(4, None, 1300)}]
    a, b = vs_skypilot.figures(runs, "skyd"), vs_skypilot.figures(runs, "SkyPilot")
    assert a["short_second_50_rps"]["median"] == 45_000
    assert b["short_second_50_p99_ms"]["runs"] == 1          # the run without p99 is left out
    assert vs_skypilot.ratio(a["short_second_50_rps"], b["short_second_50_rps"]) == "7.5e+03"
    assert vs_skypilot.ratio(a["idle_rss_mib"], b["idle_rss_mib"]) == "0.088"
    assert vs_skypilot.ratio(a["burst_accept_s"], b["burst_accept_s"]) == "—"
    assert fmt_agg(a["idle_rss_mib"], unit=" MiB") == "110.0 MiB (100.0–120.0)"
    table = vs_skypilot.table({"runs": runs})
    assert "| idle: tree RSS (sum) | 110.0 MiB (100.0–120.0) | 1,250.0 MiB (1,200.0–1,300.0) | 0.088 |" in table
    assert fmt_agg(agg([None, None])) == "—"


def test_percentiles_interpolate_between_ranks():
    xs = [1.0, 2.0, 3.0, 4.0]
    assert percentile(xs, 50) == 2.5 and percentile(xs, 0) == 1.0 and percentile(xs, 100) == 4.0
    assert percentile([], 50) is None
    s = summarize(xs)
    assert (s["n"], s["min"], s["max"]) == (4, 1.0, 4.0) and s["p99"] == pytest.approx(3.97)


def test_box_finds_every_process_it_started_and_kills_them_all():
    box = Box("test", 512 * 2**20)
    try:
        p = subprocess.Popen(box.wrap(["sh", "-c", "sleep 60 & sleep 60 & wait"]))
        assert wait_until(lambda: len(box.pids()) == 3, timeout=10), box.pids()
        assert p.pid in box.pids()
        mem = box.memory(full=True)
        assert mem["processes"] == 3 and 0 < mem["uss_mib"] <= mem["rss_mib"]
        if box.dir is not None:            # a cgroup: the kernel's figures too
            assert box.charged_peak_mib() > 0 and box.oom_kills() in (0, None)
        assert box.kill() == 3
        p.wait(10)
        assert wait_until(lambda: box.memory()["processes"] == 0, timeout=10)
    finally:
        box.close()
    assert box.dir is None or not box.dir.exists()


@pytest.mark.timeout(150)   # the generator (60 s), then the jobs (60 s)
def test_load_generator_bursts_managed_jobs_that_all_run(daemon):
    spec = {"mode": "burst", "op": "jobs_launch", "socket": str(daemon.socket), "n": 5,
            "clients": 2, "cluster": "-"}
    p = subprocess.run([sys.executable, "-m", "profiling._client", json.dumps(spec)],
                       capture_output=True, text=True, env=_env(), cwd=str(ROOT), timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["accepted"] == 5 and out["error_count"] == 0 and len(out["accepted_ids"]) == 5

    def all_succeeded():
        jobs = daemon.call(protocol.JobsQueue(all_users=True))
        return len(jobs) == 5 and all(j.status == "SUCCEEDED" and not j.teardown_pending for j in jobs)
    assert wait_until(all_succeeded, timeout=60)
