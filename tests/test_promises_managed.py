"""README's managed-jobs promise on cancel and teardown: "A teardown that fails is retried;
if it keeps failing the cluster is forgotten so its hosts serve others." A real root daemon,
a managed job of a real account (alice, tests/users.py) whose teardown as herself cannot
finish, because root put a file in her cluster."""

from __future__ import annotations

import os
import time

from conftest import wait_until
from skyd import protocol


def test_a_teardown_that_keeps_failing_is_retried_then_the_cluster_is_forgotten(team, people):
    alice, _ = people
    d = team
    # The job makes a directory, then ends once root has put a file there.
    p = alice.skyctl(d, "jobs", "launch", "--async", "-n", "stuck",
                     "mkdir keep; until [ -e keep/roots-file ]; do sleep 0.1; done")
    assert p.returncode == 0, p.stderr
    [job] = d.call(protocol.JobsQueue(all_users=True))
    cluster = f"managed-{job.job_id}"

    def node_dir():
        found = d.call(protocol.ClusterStatus(clusters=[cluster], all_users=True))
        return found[0].nodes[0].path if found and found[0].nodes else None
    assert wait_until(lambda: node_dir() is not None and
                      os.path.isdir(f"{node_dir()}/sky_workdir/keep"), 30)
    keep = f"{node_dir()}/sky_workdir/keep"
    os.chown(keep, 0, 0)                       # alice may no longer empty it: her down fails
    os.chmod(keep, 0o755)
    with open(f"{keep}/roots-file", "w") as f:
        f.write("x")

    deadline = time.monotonic() + 60           # the job ends, then 3 downs 2 s and 4 s apart
    while time.monotonic() < deadline:
        [job] = d.call(protocol.JobsQueue(all_users=True))
        if job.status == "SUCCEEDED" and not job.teardown_pending:
            break
        time.sleep(0.1)
    assert (job.status, job.teardown_pending) == ("SUCCEEDED", False), job
    # Three downs in alice's name, all failed; then the cluster is forgotten (no longer
    # listed, its name free) though its files are left, as the controller log says.
    downs = [r for r in d.call(protocol.ApiStatus(all_statuses=True, all_users=True, limit=10_000))
             if r.name == "down" and r.cluster == cluster]
    assert [(r.user, r.status) for r in downs] == [(alice.name, protocol.Status.FAILED)] * 3, downs
    assert d.call(protocol.ClusterStatus(all_users=True)) == []
    assert os.path.exists(f"{keep}/roots-file")
    log = alice.skyctl(d, "jobs", "logs", "--controller", str(job.job_id)).stdout
    for attempt in (1, 2, 3):
        assert f"teardown attempt {attempt} failed" in log, log
    assert "teardown failed 3 times" in log and "the cluster is forgotten" in log, log
