"""GPUs on an ssh node pool: three real loopback sshd hosts (tests/sshd.py), each with its
own fake nvidia-smi first on its sessions' PATH (tests/gpufakes.py): 8× H100, 2× A100 and
2× H100. GPUs are detected over the pool's connection; placement is best fit; several
clusters share a host with disjoint GPUs; a cluster that asks for nothing gets a whole
host; `skyctl infra` and `skyctl gpus` show it all."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest

from conftest import wait_until
from gpufakes import GpuSshHosts
from sshd import start_or_skip
from skyd import protocol

RUN = "echo CVD=[$CUDA_VISIBLE_DEVICES] N=$SKYPILOT_NUM_GPUS_PER_NODE; sleep 300"


@pytest.fixture
def gpu_pool(make_daemon, workdir):
    base = Path(tempfile.mkdtemp(prefix="skyd-gpu-", dir="/tmp"))
    hosts = GpuSshHosts(base, count=3)
    try:
        start_or_skip(hosts)
        try:
            fakes = [hosts.fake(0, [("H100", 8)]), hosts.fake(1, [("A100", 2)]),
                     hosts.fake(2, [("H100", 2)])]
            pools = workdir / "pools.yaml"
            pools.write_text(hosts.pool_yaml("p", shared_login=True))
            d = make_daemon("--node-pools", str(pools), "--ssh-known-hosts",
                            str(hosts.known_hosts))
            d.hosts, d.fakes = hosts, fakes
            d.key = [f"{h.ip}:{h.port}" for h in hosts]
            assert wait_until(lambda: sum(len(h.gpus) for h in d.call(protocol.GpuStatus())
                                          if h.pool == "p") == 12, 30)
            yield d
        finally:
            hosts.__exit__(None, None, None)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def hosts_of(d, cluster: str) -> list[str]:
    [c] = d.call(protocol.ClusterStatus(clusters=[cluster]))
    return [s.host for s in sorted(c.held, key=lambda s: s.rank)]


def cvd(d, cluster: str, node: int | None = None) -> list[list[int]]:
    """Each node's CUDA_VISIBLE_DEVICES as job 1 printed it."""
    found: list[list[int]] = []

    def printed() -> bool:
        text = d.skyctl("logs", cluster, "1", "--no-follow").stdout
        found[:] = [[int(i) for i in m.split(",") if i] for m in re.findall(r"CVD=\[([0-9,]*)\]", text)]
        return bool(found)
    assert wait_until(printed, 30)
    return found


def launch(d, name: str, *args: str, run: str = RUN):
    return d.skyctl("launch", "-c", name, "--infra", "ssh/p", "-d", *args, run, check=True)


def test_best_fit_keeps_the_big_box_whole_and_clusters_share_hosts(gpu_pool):
    d, key = gpu_pool, gpu_pool.key
    launch(d, "a", "--gpus", "A100:1")
    assert hosts_of(d, "a") == [key[1]]
    # 1 H100: the 2-GPU box, not the 8-GPU one.
    launch(d, "one", "--gpus", "H100:1")
    assert hosts_of(d, "one") == [key[2]]
    # 2 H100: the small box has 1 left: the big one; then 4 more beside it.
    launch(d, "two", "--gpus", "H100:2")
    launch(d, "four", "--gpus", "h100:4")
    assert hosts_of(d, "two") == hosts_of(d, "four") == [key[0]]
    [two], [four] = cvd(d, "two"), cvd(d, "four")
    assert len(two) == 2 and len(four) == 4 and not set(two) & set(four)
    # 8 would fit the big box once its clusters go: it waits, naming what is free where.
    rid = d.skyctl("launch", "--async", "-c", "eight", "--infra", "ssh/p", "--gpus", "H100:8",
                   "-d", RUN, check=True).stdout.strip().splitlines()[-1]
    why = f"waiting for 8× H100: 2 of 8 free on {key[0]}, 1 of 2 free on {key[2]}"
    assert wait_until(lambda: d.request(rid).waiting == why), d.request(rid).waiting
    # The listings: GPUs per host, several clusters on one, the isolation caveat.
    infra = d.skyctl("infra")
    assert re.search(rf"{re.escape(key[0])}.*8× H100 \(2 free\).*two, four", infra.stdout), infra.stdout
    assert "GPU isolation is by environment only" in infra.stderr
    gpus = d.skyctl("gpus").stdout
    assert re.search(rf"p\s+{re.escape(key[1])}\s+A100\s+2\s+1\s+root/a \(\d\)", gpus), gpus
    d.skyctl("down", "two", check=True)
    d.skyctl("down", "four", check=True)
    assert d.wait_request(rid).status == "succeeded"
    assert hosts_of(d, "eight") == [key[0]] and sorted(cvd(d, "eight")[0]) == list(range(8))


def test_a_cluster_that_asks_for_nothing_gets_a_whole_host(gpu_pool):
    d, key = gpu_pool, gpu_pool.key
    launch(d, "plain")                        # the first free host, in pool order
    assert hosts_of(d, "plain") == [key[0]]
    assert cvd(d, "plain") == [[]]            # its job asked for no GPU: none visible
    [host] = [h for h in d.call(protocol.GpuStatus()) if h.host == key[0]]
    assert {g.cluster for g in host.gpus} == {"plain"}
    # GPU work goes elsewhere.
    launch(d, "g", "--gpus", "H100:2")
    assert hosts_of(d, "g") == [key[2]]
    p = d.skyctl("launch", "-c", "mn", "--infra", "ssh/p", "--num-nodes", "2", "--gpus",
                 "A100:1", "true")
    assert p.returncode == 2
    assert "pool 'p' can never give 1× A100 to each of 2 nodes on distinct hosts" in p.stderr


def test_two_nodes_on_two_hosts_and_a_failing_nvidia_smi(gpu_pool):
    d, key = gpu_pool, gpu_pool.key
    launch(d, "mn", "--num-nodes", "2", "--gpus", "H100:2")
    assert hosts_of(d, "mn") == [key[2], key[0]]       # the fullest that fit, best first
    nodes = cvd(d, "mn")
    assert len(nodes) == 2 and all(len(n) == 2 for n in nodes)
    # The A100 host's nvidia-smi breaks: reported, and its GPUs are not given out.
    d.fakes[1].fail()
    infra = d.skyctl("infra", "--refresh")
    assert f"{key[1]}: GPU detection failed: nvidia-smi failed (exit status 9)" in infra.stderr
    rid = d.skyctl("launch", "--async", "-c", "a", "--infra", "ssh/p", "--gpus", "A100:1",
                   "-d", RUN, check=True).stdout.strip().splitlines()[-1]
    assert wait_until(lambda: "nvidia-smi failed" in d.request(rid).waiting), d.request(rid)
    d.fakes[1].fail(False)
    d.skyctl("infra", "--refresh", check=True)
    assert d.wait_request(rid).status == "succeeded"
    assert hosts_of(d, "a") == [key[1]]


def test_gpus_are_detected_again_when_the_pool_file_changes(gpu_pool, workdir):
    d, key = gpu_pool, gpu_pool.key

    def pool_hosts() -> dict[str, int]:
        return {h.host: len(h.gpus) for h in d.call(protocol.GpuStatus(pools=["p"]))}
    (workdir / "pools.yaml").write_text(d.hosts.pool_yaml("p", d.hosts.hosts[:1]))
    assert wait_until(lambda: pool_hosts() == {key[0]: 8}, 15), pool_hosts()
    d.fakes[1].set([("A100", 4)])              # changed while out of the pool
    (workdir / "pools.yaml").write_text(d.hosts.pool_yaml("p", d.hosts.hosts[:2]))
    assert wait_until(lambda: pool_hosts() == {key[0]: 8, key[1]: 4}, 15), pool_hosts()
