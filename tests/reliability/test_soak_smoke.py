"""The soak itself (`python3 -m profiling.soak`) at tiny sizes: every run works end to end
and reports RELIABILITY.md's columns. Its real sizes take an hour; see RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, _env


# ~15 s here.
@pytest.mark.timeout(120)
def test_the_soak_runs_everything_and_reports_every_column(workdir):
    out = workdir / "soak.json"
    p = subprocess.run([sys.executable, "-m", "profiling.soak", "all", "--smoke", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=110)
    assert p.returncode == 0, p.stdout + p.stderr
    rows = json.loads(out.read_text())
    assert [r["test"].split()[0] for r in rows] == ["crash", "wire", "task", "node-pool", "steady"]
    for r in rows:
        assert r["ok"] and r["cases"] > 0, r
        for column in ("faults", "accepted", "lost", "duplicated", "run_twice", "orphans", "crashes"):
            assert column in r, (column, r)
    crash, steady = rows[0], rows[-1]
    assert len(crash["details"]["stops"]) == 2 and crash["accepted"] > 0, crash
    assert steady["details"]["memory_slope_mib_per_min"] is not None, steady
    assert "| test | cases | faults injected |" in p.stdout
