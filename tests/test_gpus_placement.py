"""The placement code in-process (skyd.clusters.ledger, placement, claims) and the parsing
of what nvidia-smi and tasks say: best fit, fair order, fences against starvation, caps,
a host that shrinks. The daemon-level behaviour is in test_gpus.py and test_gpus_ssh.py."""

from __future__ import annotations

import pytest

from skyd.clusters.claims import MAX_OVERTAKES, Caps, Claim, Claims
from skyd.clusters.ledger import Ledger
from skyd.clusters.placement import Demand, never_fits, place, why_waiting
from skyd.infra.gpus import Detected, Gpu, model_of, parse_query, parse_remote
from skyd.taskspec import GpuAsk, TaskError, parse_accelerators


def gpus(model: str, n: int) -> Detected:
    return Detected(gpus=[Gpu(i, model, f"NVIDIA {model}", 1000) for i in range(n)])


def ledger(*sizes: tuple[str, str, int]) -> Ledger:
    led = Ledger()
    led.set_pools({"p": [key for key, _, _ in sizes]})
    for key, model, n in sizes:
        led.set_gpus(key, gpus(model, n), 0.0)
    return led


def ask(n: int, model: str = "H100", nodes: int = 1) -> Demand:
    return Demand(pool="p", num_nodes=nodes, options=(GpuAsk(model, n),))


def test_best_fit_keeps_the_big_box_whole():
    led = ledger(("big", "H100", 8), ("small", "H100", 2))
    [s] = place(led, ask(1))
    assert (s.host, s.gpus) == ("small", [0])
    led.hold("a", 1, "a", [s])
    [s] = place(led, ask(2))               # 1 left on small: the big one
    assert s.host == "big"
    led.hold("b", 1, "a", [s])
    [s] = place(led, ask(1))
    assert (s.host, s.gpus) == ("small", [1])
    assert place(led, ask(8)) is None
    assert why_waiting(led, ask(8)) == "waiting for 8× H100: 6 of 8 free on big, 1 of 2 free on small"


def test_alternatives_models_and_what_can_never_fit():
    led = ledger(("h", "H100", 8), ("a", "A100", 2))
    both = Demand(pool="p", options=(GpuAsk("b200", 1), GpuAsk("a100", 2)))
    [s] = place(led, both)
    assert (s.host, s.gpu_model) == ("a", "A100")
    assert never_fits(led, ask(16)) == ("pool 'p' can never give 16× H100: it has 8× H100 on h, "
                                        "2× A100 on a")
    assert "can never give 2× A100 to each of 2 nodes" in never_fits(led, ask(2, "A100", 2))
    assert never_fits(led, ask(4, nodes=1)) == ""


def test_freed_room_goes_to_the_smallest_share_and_within_a_person_by_priority():
    led = ledger(("h", "H100", 2))
    claims = Claims(led)
    placed = []
    for i in range(4):
        claims.add(Claim(f"a{i}", 1, "alice", ask(1), placed.append, priority=500 + i))
    claims.add(Claim("b0", 2, "bob", ask(1), placed.append))
    first = [c.key for c in claims.run()]
    # alice goes first (arrived first), then bob (holding none), then alice's highest.
    assert first == ["a3", "b0"]
    led.release("a3")
    assert [c.key for c in claims.run()] == ["a2"]


def test_a_big_claim_passed_over_too_often_gets_a_host_fenced():
    led = ledger(("h1", "H100", 8), ("h2", "H100", 8))
    for host in ("h1", "h2"):                    # one GPU of each box held for good
        [s] = place(led, Demand(pool="p", options=(GpuAsk("H100", 1),)), frozenset({
            "h2" if host == "h1" else "h1"}))
        led.hold(f"x-{host}", 9, "x", [s])
    claims = Claims(led)
    claims.add(Claim("big", 1, "alice", ask(8), lambda c: None))
    for i in range(200):
        claims.add(Claim(f"s{i}", 2 + i % 5, "bob", ask(1), lambda c: None))
    running = [c for c in claims.run()]
    assert "big" in claims.by_key and len(running) == 14
    fence = None
    while "big" in claims.by_key:
        done = running.pop(0)
        led.release(done.key)
        placed = claims.run()
        if fence is not None:                      # nothing else goes to the fenced host
            assert all(c.key == "big" or c.slices[0].host != fence for c in placed)
        elif claims.fenced:
            [fence] = claims.fenced                # the host kept for it
            assert claims.by_key["big"].overtaken >= MAX_OVERTAKES
            led.release(f"x-{fence}")
        running += [c for c in placed if c.key != "big"]
    assert led.holding("big")[0].host == fence and claims.fenced == {}


def test_caps_and_a_host_that_shrank():
    led = ledger(("h", "H100", 4))
    claims = Claims(led, Caps(gpus=2))
    claims.add(Claim("a", 1, "alice", ask(2), lambda c: None))
    claims.add(Claim("b", 1, "alice", ask(1), lambda c: None))
    assert [c.key for c in claims.run()] == ["a"]
    [changed] = claims.explain()
    assert changed.reason == "waiting for 1× H100: max_gpus_per_user is 2 and you hold 2"
    [held] = led.holding("a")
    assert led.set_gpus("h", gpus("H100", min(held.gpus)), 1.0) == ["a"]


@pytest.mark.parametrize("name, mib, model", [
    ("NVIDIA H100 80GB HBM3", 81559, "H100"), ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
    ("NVIDIA A100-SXM4-40GB", 40960, "A100"), ("Tesla V100-SXM2-16GB", 16384, "V100"),
    ("NVIDIA GeForce RTX 4090", 24564, "RTX4090"), ("NVIDIA L4", 23034, "L4")])
def test_nvidia_smi_names_become_the_models_tasks_use(name, mib, model):
    assert model_of(name, mib) == model


def test_nvidia_smi_output_and_failures():
    [g] = parse_query("0, NVIDIA H100 80GB HBM3, 81559 MiB\n")
    assert (g.index, g.model, g.memory_mib) == (0, "H100", 81559)
    with pytest.raises(ValueError):
        parse_query("No devices were found\n")
    found = parse_remote("#gpus\n#none\n#size\n16\n68719476736\n")
    assert (found.gpus, found.error, found.cpus) == ([], "", 16.0)
    failed = parse_remote("#gpus\nNVIDIA-SMI has failed\n#failed 9\n#size\n4\n100\n")
    assert failed.error == "nvidia-smi failed (exit status 9): NVIDIA-SMI has failed"


@pytest.mark.parametrize("raw, error", [
    ("H100:0.5", "whole GPUs only"), ("H100:0", "between 1 and 64"), ("H100:inf", "a number"),
    ([], "empty"), (["H100", "h100:2"], "named twice"), ("-x", "not a GPU model name")])
def test_bad_accelerators(raw, error):
    with pytest.raises(TaskError, match=error):
        parse_accelerators(raw)
