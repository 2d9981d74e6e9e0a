"""GPUs between people (tests/users.py: alice and bob, real accounts running the real
skyctl): freed GPUs go to whoever holds the smallest share (one who asked for many does
not starve one who asked for one), per-user caps, and what each may see of the other."""

from __future__ import annotations

import os

import pytest

from conftest import wait_until
from gpufakes import FakeGpus
from skyd import protocol

SLEEP = "sleep 600"


@pytest.fixture
def shared_box(make_daemon, workdir, people, monkeypatch):
    """A root daemon, open to alice and bob, on a host with 2× H100."""
    import users

    def start(*args: str):
        os.chmod(workdir, 0o755)          # let them reach the socket
        fake = FakeGpus(workdir / "bin", [("H100", 2)])
        monkeypatch.setenv("PATH", f"{fake.bin}:{os.environ['PATH']}")
        d = make_daemon("--socket-group", users.GROUP, *args)
        assert wait_until(lambda: sum(len(h.gpus) for h in d.call(protocol.GpuStatus())) == 2, 20)
        return d
    return start


def clusters(d) -> set[str]:
    return {c.name for c in d.call(protocol.ClusterStatus(all_users=True))}


def request_of(d, cluster: str) -> protocol.RequestRecord:
    [r] = [r for r in d.call(protocol.ApiStatus(all_users=True, all_statuses=True, limit=1000))
           if r.cluster == cluster and r.name == "launch"]
    return r


def test_freed_gpus_go_to_the_person_holding_fewest(shared_box, people):
    d = shared_box()
    alice, bob = people
    for i in range(5):
        p = alice.skyctl(d, "launch", "--async", "-c", f"a{i}", "--gpus", "H100:1", "-d", SLEEP)
        assert p.returncode == 0, p.stderr
    assert wait_until(lambda: {"a0", "a1"} <= clusters(d), 30), clusters(d)
    assert wait_until(lambda: request_of(d, "a4").waiting.startswith("waiting for 1× H100"))
    p = bob.skyctl(d, "launch", "--async", "-c", "b0", "--gpus", "H100:1", "-d", SLEEP)
    assert p.returncode == 0, p.stderr
    assert wait_until(lambda: request_of(d, "b0").waiting != "")
    # Alice holds both GPUs and waits for three more; Bob waits for one. One frees: Bob's.
    assert alice.skyctl(d, "down", "a0").returncode == 0
    assert wait_until(lambda: "b0" in clusters(d), 30), clusters(d)
    assert request_of(d, "a2").status == "pending" and "a2" not in clusters(d)
    # Each sees who holds a GPU; only their own clusters by name.
    seen = alice.skyctl(d, "gpus", "--json")
    assert '"cluster":"a1"' in seen.stdout.replace(" ", "") and "(in use)" in seen.stdout
    assert '"b0"' not in seen.stdout and '"user":"skyd-bob"' in seen.stdout.replace(" ", "")
    # Alice's next one goes once Bob's frees too (he then holds none, she one).
    assert bob.skyctl(d, "down", "b0").returncode == 0
    assert wait_until(lambda: "a2" in clusters(d), 30), clusters(d)


def test_caps_per_user(shared_box, people):
    d = shared_box("--max-gpus-per-user", "1", "--max-clusters-per-user", "2")
    alice, _ = people
    p = alice.skyctl(d, "launch", "-c", "x", "--gpus", "H100:2", "true")
    assert p.returncode == 2 and "asks for 2 GPUs; max_gpus_per_user is 1" in p.stderr, p.stderr
    assert alice.skyctl(d, "launch", "-c", "a1", "--gpus", "H100:1", "-d", SLEEP).returncode == 0
    p = alice.skyctl(d, "launch", "-c", "a2", "--gpus", "H100:1", "-d", SLEEP)
    assert p.returncode != 0 and "max_gpus_per_user is 1: you hold or wait for 1 GPUs" in p.stderr
    assert alice.skyctl(d, "launch", "-c", "a3", "-d", "true").returncode == 0
    p = alice.skyctl(d, "launch", "-c", "a4", "-d", "true")
    assert p.returncode != 0 and "max_clusters_per_user is 2: you have 2 clusters" in p.stderr
    # A managed job over the cap is not refused: it waits, saying why.
    p = alice.skyctl(d, "jobs", "launch", "--async", "--gpus", "H100:1", "true")
    assert p.returncode == 0, p.stderr
    assert wait_until(lambda: any("max_gpus_per_user is 1" in j.reason for j in
                                  d.call(protocol.JobsQueue(all_users=True))), 10)
    # Root (the host's operator) has no caps; the caps are reported.
    assert d.skyctl("launch", "-c", "r", "--gpus", "H100:1", "-d", SLEEP).returncode == 0
    info = d.call(protocol.ApiInfo())
    assert (info.limits.max_gpus_per_user, info.limits.max_clusters_per_user) == (1, 2)
