"""Fixtures of the reliability suite, beside tests/conftest.py's (a real daemon per test,
`make_daemon`, `workdir`): a seed to replay a random run, a small tmpfs to fill, and the
size of the fuzzing runs (CI-sized here; `python3 -m profiling.soak` runs the big ones)."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Cases per property test; SKYD_FUZZ_CASES=N runs more (or fewer) of each.
FUZZ_CASES = int(os.environ.get("SKYD_FUZZ_CASES") or 150)

# The settings of every property test here (not a global profile: other files' hypothesis
# tests keep theirs). Each case is a round trip to a real daemon, so no deadline; one daemon
# serves every case of a test, which is the point (it must survive them all).
FUZZ = settings(max_examples=FUZZ_CASES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@pytest.fixture
def seed() -> int:
    """A random seed, printed on failure by the tests; SKYD_TEST_SEED=N replays one."""
    return int(os.environ.get("SKYD_TEST_SEED") or random.randrange(1 << 30))


@pytest.fixture
def tmpfs(workdir):
    """make(size) -> a tmpfs of that size mounted at workdir/<name> (root only), unmounted
    after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def make(size: str, name: str = "state") -> Path:
        path = workdir / name
        path.mkdir(exist_ok=True)
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if p.returncode != 0:
            if os.environ.get("CI"):
                raise RuntimeError(f"cannot mount a tmpfs: {p.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):          # a mount inside another first
        # Lazy: the daemon fixture may still be stopping when this runs.
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
