"""Percentiles and latency summaries, with nothing but the standard library: shared by the
load generators, including the HTTP one that runs under SkyPilot's interpreter."""

from __future__ import annotations


def percentile(sorted_xs: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not sorted_xs:
        return None
    if len(sorted_xs) == 1:
        return sorted_xs[0]
    k = (len(sorted_xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def summarize(sorted_xs: list[float]) -> dict:
    return {"n": len(sorted_xs), "p50": percentile(sorted_xs, 50), "p95": percentile(sorted_xs, 95),
            "p99": percentile(sorted_xs, 99), "max": sorted_xs[-1] if sorted_xs else None,
            "min": sorted_xs[0] if sorted_xs else None}
