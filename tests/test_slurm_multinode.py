"""A two-node cluster on the `slurm` infra (tests/slurm.py's `slurm_two_nodes`: two
slurmd daemons on this host, node1 at 127.0.0.1 and node2 at 127.0.0.2), through a real
daemon and the real skyctl: setup and every job are one srun step on both nodes, each
node's rank, the node count and the nodes' IPs from Slurm's own variables, each node's
lines prefixed with its rank."""

from __future__ import annotations

import time

import pytest

from conftest import processes_mentioning, wait_until, write_task
from slurm import slurm_two_nodes  # noqa: F401 - the fixture
from test_slurm import _forget_files, allocation_state, cluster, slurm_config


def says(what: str, prefix: str = "") -> str:
    """A command by which each node says `what` it runs, SkyPilot's rank, node count and
    IPs (`prefix`: SETUP_ in setup), and the Slurm node it is on (both share a hostname)."""
    return (f'echo "{what} $SKYPILOT_{prefix}NODE_RANK $SKYPILOT_{prefix}NUM_NODES '
            f'$(echo $SKYPILOT_{prefix}NODE_IPS) $SLURMD_NODENAME"')


TASK = f"""
num_nodes: 2
resources:
  infra: slurm
  cpus: 1
  memory: 0.25
setup: {says("setup", "SETUP_")}
run: {says("run")}
"""


@pytest.fixture
def on_two_nodes(make_daemon, slurm_two_nodes, workdir):  # noqa: F811
    """A daemon (root) with the slurm infra on the two-node cluster."""
    config, files_dir = slurm_config(workdir, slurm_two_nodes)
    d = make_daemon("--config", str(config))
    d.slurm = slurm_two_nodes
    yield d
    slurm_two_nodes.cancel_all()
    _forget_files(files_dir)


def both_nodes(what: str) -> list[str]:
    """The lines both nodes print for `what` (setup, run), each with its rank's prefix."""
    return [f"(node-{rank}) {what} {rank} 2 127.0.0.1 127.0.0.2 node{rank + 1}"
            for rank in (0, 1)]


def node_states(slurm) -> list[str]:
    out = slurm.run(["sinfo", "-h", "-N", "-n", "node1,node2", "-o", "%T"]).stdout
    return out.split()


def test_two_nodes_launch_exec_and_down_with_ranks_ips_and_prefixed_output(on_two_nodes, workdir):
    slurm = on_two_nodes.slurm
    p = on_two_nodes.skyctl("launch", "-c", "mn", str(write_task(workdir, "mn.yaml", TASK)))
    assert p.returncode == 0, p.stderr + p.stdout
    for line in both_nodes("setup") + both_nodes("run"):
        assert line in p.stdout, p.stdout

    c = cluster(on_two_nodes, "mn")
    assert [(n.rank, n.host, n.ip) for n in c.nodes] == \
        [(0, "node1", "127.0.0.1"), (1, "node2", "127.0.0.2")]
    [alloc] = {n.allocation for n in c.nodes}
    [job] = [j for j in slurm.jobs() if j["id"] == alloc]
    assert (job["name"], job["state"]) == ("skyd-mn", "RUNNING")
    held = node_states(slurm)                                    # both nodes hold it
    assert len(held) == 2 and set(held) <= {"mixed", "allocated"}, held

    logs = on_two_nodes.skyctl("logs", "mn", "1", "--no-follow").stdout
    for line in both_nodes("run"):
        assert line in logs, logs

    e = on_two_nodes.skyctl("exec", "mn", says("exec"))
    assert e.returncode == 0, e.stderr + e.stdout
    for line in both_nodes("exec"):
        assert line in e.stdout, e.stdout
    assert on_two_nodes.wait_job("mn", 2).status == "SUCCEEDED"

    d = on_two_nodes.skyctl("down", "mn", "-y")
    assert d.returncode == 0, d.stderr
    assert wait_until(lambda: allocation_state(slurm, alloc) in ("CANCELLED", ""), 10)
    assert wait_until(lambda: node_states(slurm) == ["idle", "idle"], 10)


def test_one_node_failing_fails_the_job_and_stops_the_other(on_two_nodes, workdir):
    """A job whose task on one node is killed (-9) while the other's goes on: the job fails
    with that node's status soon after, not when the other would have ended, and nothing
    of it is left running on either node."""
    d = on_two_nodes
    p = d.skyctl("launch", "-c", "mf", str(write_task(workdir, "mf.yaml", TASK)))
    assert p.returncode == 0, p.stderr + p.stdout
    mark = "sleep 4041"
    run = f'if [ "$SKYPILOT_NODE_RANK" = 1 ]; then sleep 1; kill -9 $$; fi; {mark}; echo never'
    e = d.skyctl("exec", "mf", "--async", run)
    assert e.returncode == 0, e.stderr
    t0 = time.monotonic()
    job = d.wait_job("mf", 2, timeout=30)
    assert job.status == "FAILED" and time.monotonic() - t0 < 25, job
    assert job.exit_code not in (None, 0), job
    assert wait_until(lambda: not processes_mentioning(mark), 10)
    assert "never" not in d.skyctl("logs", "mf", "2", "--no-follow").stdout
    assert d.skyctl("down", "mf", "-y").returncode == 0
