"""What a kind's load gave: its latencies and errors, as JSON and as a table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from profiling._stats import percentile


@dataclass
class KindResult:
    kind: str
    mode: str                   # "api" or "cli"
    clients: int
    wait: bool = True
    latencies: list[float] = field(default_factory=list)   # seconds, successful requests
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    note: str = ""

    @property
    def count(self) -> int:
        return len(self.latencies) + self.errors

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(text[:300])

    def to_json(self) -> dict:
        return {"kind": self.kind, "mode": self.mode, "clients": self.clients,
                "async": not self.wait, "count": self.count, "errors": self.errors,
                "elapsed_s": round(self.elapsed_s, 4),
                "throughput_per_s": (round(self.count / self.elapsed_s, 2)
                                     if self.elapsed_s > 0 else 0.0),
                "latency_ms": latency_ms(self.latencies), "error_samples": self.error_samples,
                "note": self.note}


def latency_ms(latencies: list[float]) -> dict:
    xs = sorted(x * 1000 for x in latencies)
    if not xs:
        return {k: None for k in ("min", "avg", "p50", "p95", "p99", "max")}
    return {"min": xs[0], "avg": statistics.fmean(xs), "p50": percentile(xs, 50),
            "p95": percentile(xs, 95), "p99": percentile(xs, 99), "max": xs[-1]}


def render_table(results: list[KindResult]) -> str:
    head = ["kind", "mode", "clients", "count", "errors", "req/s", "min", "avg", "p50", "p95",
            "p99", "max"]
    rows = []
    for r in results:
        j = r.to_json()
        lat = j["latency_ms"]
        rows.append([r.kind + (" --async" if not r.wait else ""), r.mode, str(r.clients),
                     str(j["count"]), str(j["errors"]), f"{j['throughput_per_s']:.1f}",
                     *("-" if lat[k] is None else f"{lat[k]:.2f}"
                       for k in ("min", "avg", "p50", "p95", "p99", "max"))])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(head, widths)))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))
    lines.append("(latency in ms; req/s = answered requests / elapsed)")
    for r in results:
        for e in r.error_samples:
            lines.append(f"{r.kind}: error: {e}")
        if r.note:
            lines.append(f"{r.kind}: {r.note}")
    return "\n".join(lines)
