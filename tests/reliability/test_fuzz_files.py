"""Fuzzing task YAML and the node-pool file (hypothesis): skyctl turns every task file into
a Task or one clear error; the daemon answers every task sent raw with a clear error (never
an internal one) and accepts whatever skyctl accepted; a few accepted tasks are really
launched (their commands replaced by `true`) and must run. A node-pool file rewritten under
the daemon gives NOT_FOUND for a missing pool when valid, a clear INVALID_TASK when not.
The inputs that hit defects the fuzzing found (since fixed) are kept as plain tests at the end."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given

from conftest import write_task
from profiling.soak import fuzz_files as ff
from reliability.conftest import FUZZ
from skyctl.connection import Connection
from skyd import protocol
from skyd.taskspec import Task

LAUNCHES = 6        # accepted tasks really launched per run (each ~0.3 s)


@pytest.fixture
def client_cache(workdir, monkeypatch):
    """skyctl caches parsed task files under $XDG_CACHE_HOME: keep them in the test's dir."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(workdir / "cache"))


# ~15 s for 150 cases here.
@pytest.mark.timeout(150)
def test_every_fuzzed_task_file_gets_a_clear_answer_from_both_sides(make_daemon, workdir, client_cache):
    d = make_daemon("--long-slots", "2")
    path = workdir / "task.yaml"
    launched: list[str] = []
    with Connection(str(d.socket), "fuzz", timeout=30).connect() as conn:

        @FUZZ
        @given(data=ff.yaml_texts(ff.task_docs()))
        def task_file(data: bytes) -> None:
            why, task = ff.check_task(conn, path, data)
            assert why == "", why
            run = ff.runnable(task) if task is not None and len(launched) < LAUNCHES else None
            if run is not None:
                _launch(d, run, launched)
        task_file()
    assert d.proc.poll() is None
    assert "failed inside the server" not in d.log(), d.log()[-3000:]
    # nothing but the launches reached the database: every refusal came before it
    rows = d.call(protocol.ApiStatus(all_statuses=True, limit=10_000))
    assert sorted(r.id for r in rows if r.queue is protocol.Queue.LONG) == sorted(launched)


def _launch(d, task: Task, launched: list[str]) -> None:
    """Launch an accepted task for real: it runs, or is refused at once with a clear error
    (e.g. more CPUs than this host has); never accepted and then failed."""
    msgs = d.frames(protocol.Launch(task=task, cluster=f"fz{len(launched)}"), wait=False)
    last = msgs[-1]
    if isinstance(last, protocol.Error):
        assert last.code in (protocol.ErrorCode.INVALID_TASK, protocol.ErrorCode.CONFLICT), (task, last)
        return
    launched.append(last.request_id)
    rec = d.wait_request(last.request_id, 60)
    assert rec.status is protocol.Status.SUCCEEDED, (task, rec)


# ~10 s for 150 cases here.
@pytest.mark.timeout(120)
def test_every_fuzzed_pool_file_is_read_again_and_judged_clearly(make_daemon, workdir):
    pools = workdir / "pools.yaml"
    d = make_daemon("--node-pools", str(pools))
    missing = f"fuzz-{uuid.uuid4().hex}"            # a pool no generated file can name
    stamp = [10**18]
    with Connection(str(d.socket), "fuzz", timeout=30).connect() as conn:

        @FUZZ
        @given(data=ff.yaml_texts(ff.pool_docs()))
        def pool_file(data: bytes) -> None:
            stamp[0] += 1
            ff.write_pool_file(pools, data, stamp[0])
            why = ff.check_pool_reply(ff.ask_for_missing_pool(conn, missing), pools)
            assert why == "", why
        pool_file()
        # a valid file is taken again at once, without a restart
        ff.write_pool_file(pools, b"p:\n  hosts: [127.0.0.9]\n", stamp[0] + 1)
        assert ff.ask_for_missing_pool(conn, "p") != ff.ask_for_missing_pool(conn, missing)
    assert d.proc.poll() is None
    assert "failed inside the server" not in d.log(), d.log()[-3000:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("body, expect", [
    ("p: [unclosed\n", "not valid YAML"),
    ("p:\n  hosts: [127.0.0.9]\n  port: 70000\n", "port"),
    ("- just\n- a list\n", "mapping"),
])
def test_a_broken_pool_file_stops_the_start_with_one_clear_message(make_daemon, workdir, body, expect):
    pools = workdir / "pools.yaml"
    pools.write_text(body)
    d = make_daemon("--node-pools", str(pools), start=False)
    d.spawn()
    assert d.proc.wait(20) != 0
    out = d.log()
    assert expect in out and "Traceback" not in out, out


# ---- defects found by the fuzzing, fixed -------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("body", [b"\xff\xfep:\n  hosts: [127.0.0.9]\n",
                                  b"p:\n  hosts: [127.0.0.9]\n  null: x\n  region: y\n",
                                  b"p:\n  hosts:\n    - ip: 127.0.0.9\n      1: x\n      zone: y\n"],
                         ids=["not-utf8", "null-key", "int-key-in-host"])
def test_a_pool_file_that_cannot_be_read_as_names_is_a_clear_error(make_daemon, workdir, body):
    pools = workdir / "pools.yaml"
    d = make_daemon("--node-pools", str(pools))
    pools.write_bytes(body)
    with Connection(str(d.socket), "t", timeout=30).connect() as conn:
        reply = ff.ask_for_missing_pool(conn, "x")
    assert ff.check_pool_reply(reply, pools) == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workdir_value", ["~nosuchuser/x", "a\\0b"], ids=["unknown-user", "nul"])
def test_task_paths_skyctl_cannot_resolve_are_a_clear_error(daemon, workdir, workdir_value):
    task = write_task(workdir, "t.yaml", f'run: echo\nworkdir: "{workdir_value}"\n')
    p = daemon.skyctl("launch", "-c", "paths", str(task))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "workdir" in p.stderr, p.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["x\0y", "x" * 200_000], ids=["nul", "too-big"])
def test_env_values_a_job_cannot_carry_are_refused_at_submission(daemon, value):
    msgs = daemon.frames(protocol.Launch(task=Task(run="true", envs={"A": value}), cluster="envs"),
                         wait=False)
    assert isinstance(msgs[-1], protocol.Error), msgs[-1]
    assert msgs[-1].code is protocol.ErrorCode.INVALID_TASK and "envs" in msgs[-1].message

