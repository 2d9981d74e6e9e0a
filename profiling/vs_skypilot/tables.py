"""Figures and tables: each figure of one server as agg() over the runs, the ratio skyd /
SkyPilot of the medians, and notes on what failed or was cut short."""

from __future__ import annotations

from profiling._report import agg, dig, fmt_agg, markdown


def figures(runs: list[dict], who: str) -> dict[str, dict]:
    """Each figure of one server as agg() over the runs (None where a run lacks it)."""
    def get(path: str) -> dict:
        return agg([dig(r.get(who), path) for r in runs])

    f = {"start_s": get("start.until_answering_s"), "idle_processes": get("idle.processes"),
         "idle_rss_mib": get("idle.rss_mib"), "idle_uss_mib": get("idle.uss_mib"),
         "idle_pss_mib": get("idle.pss_mib"), "cli_status_s": get("cli_status_s.median"),
         "burst_accepted_per_s": get("burst.accepted_per_s"),
         "burst_accept_s": get("burst.elapsed_s"),
         "burst_p50_ms": get("burst.latencies_ms_summary.p50"),
         "burst_p99_ms": get("burst.latencies_ms_summary.p99"),
         "burst_until_none_active_s": get("burst.until_none_active_s"),
         "burst_peak_rss_mib": get("burst.tree.peak_rss_mib"),
         "burst_peak_processes": get("burst.tree.peak_processes"),
         "after_short_rss_mib": get("after_short.rss_mib"),
         "after_short_processes": get("after_short.processes")}
    for pass_name in ("first", "second"):
        for i, c in enumerate((1, 10, 50)):
            base = f"short_{pass_name}.levels.{i}"
            f[f"short_{pass_name}_{c}_rps"] = get(f"{base}.req_per_s")
            for q in ("p50", "p99"):
                f[f"short_{pass_name}_{c}_{q}_ms"] = get(f"{base}.latencies_ms_summary.{q}")
        f[f"short_{pass_name}_peak_rss_mib"] = get(f"short_{pass_name}.tree.peak_rss_mib")
        f[f"short_{pass_name}_peak_processes"] = get(f"short_{pass_name}.tree.peak_processes")
    return f


def ratio(a: dict, b: dict) -> str:
    if not a["median"] or not b["median"]:
        return "—"
    r = a["median"] / b["median"]
    return f"{r:.3g}" if r >= 0.001 else f"{r:.2e}"


def _pass_rows(p: str) -> list[tuple]:
    """The rows of one pass of the short load: each level, then the tree's peaks."""
    return [*[(f"short_{p}_{c}_{k}", f"status, {c} client{'s' * (c > 1)}, {p} pass: {label}",
               1, d, u)
              for c in (1, 10, 50) for k, label, d, u in (("rps", "req/s", 1, ""),
                                                         ("p50_ms", "p50", 2, " ms"),
                                                         ("p99_ms", "p99", 2, " ms"))],
            (f"short_{p}_peak_rss_mib", f"{p} pass: tree RSS peak", 1, 0, " MiB"),
            (f"short_{p}_peak_processes", f"{p} pass: processes peak", 1, 0, "")]


ROWS = [  # key, label, scale, digits, unit
    ("cli_status_s", "status as a fresh CLI process (`skyctl status` / `sky status`)", 1000, 1,
     " ms"),
    ("start_s", "start until answering", 1000, 0, " ms"),
    ("idle_processes", "idle: processes in the tree", 1, 0, ""),
    ("idle_rss_mib", "idle: tree RSS (sum)", 1, 1, " MiB"),
    ("idle_uss_mib", "idle: tree USS (sum)", 1, 1, " MiB"),
    ("idle_pss_mib", "idle: tree PSS (sum)", 1, 1, " MiB"),
    *_pass_rows("first"),
    *_pass_rows("second"),
    ("after_short_rss_mib", "after the short load, idle: tree RSS", 1, 0, " MiB"),
    ("after_short_processes", "after the short load, idle: processes", 1, 0, ""),
    ("burst_accepted_per_s", "burst: accepted per second (one submitter)", 1, 1, "/s"),
    ("burst_accept_s", "burst: until all accepted", 1, 2, " s"),
    ("burst_p50_ms", "burst: submit latency p50", 1, 2, " ms"),
    ("burst_p99_ms", "burst: submit latency p99", 1, 2, " ms"),
    ("burst_until_none_active_s", "burst: until none is active", 1, 1, " s"),
    ("burst_peak_rss_mib", "burst: tree RSS peak", 1, 0, " MiB"),
    ("burst_peak_processes", "burst: processes peak", 1, 0, ""),
]


def table(res: dict) -> str:
    a, b = figures(res["runs"], "skyd"), figures(res["runs"], "SkyPilot")
    rows = [[label, fmt_agg(a[k], s, d, u), fmt_agg(b[k], s, d, u), ratio(a[k], b[k])]
            for k, label, s, d, u in ROWS]
    return markdown(["figure", "skyd median (min–max)", "SkyPilot 0.14.1 median (min–max)",
                     "skyd / SkyPilot"], rows)


def notes(res: dict) -> str:
    lines = []
    for r_i, r in enumerate(res["runs"], 1):
        for who in ("skyd", "SkyPilot"):
            x = r.get(who, {})
            if x.get("aborted") or x.get("error"):
                lines.append(f"- run {r_i}, {who}: {x.get('aborted') or x.get('error')}")
            fs = x.get("burst", {}).get("final_statuses")
            if fs:
                lines.append(f"- run {r_i}, {who}: burst outcome {fs}")
            errs = sum(lv.get("error_count", len(lv.get("errors", [])))
                       for p in ("short_first", "short_second")
                       for lv in x.get(p, {}).get("levels", []))
            if errs:
                lines.append(f"- run {r_i}, {who}: {errs} short requests failed")
    return "\n".join(lines)
