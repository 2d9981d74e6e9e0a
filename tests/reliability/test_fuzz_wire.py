"""Fuzzing the wire (hypothesis): truncated and oversized frames, wrong types, unknown tags,
garbage, server messages sent by a client, valid messages out of order. Every case gets
exactly the replies the session's rules give (an Error for anything invalid, never an
internal one) and a clean close; the daemon never dies; its database never changes.
profiling/soak/fuzz_wire.py holds the strategies and the rules; `python3 -m profiling.soak
fuzz` runs 100,000 cases."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import given

from conftest import wait_until
from profiling.soak import fuzz_wire as fw
from reliability.conftest import FUZZ
from skyd import protocol
from skyd.taskspec import Task


@pytest.fixture(scope="module")
def fuzz_daemon(make_module_daemon):
    """A daemon with something in its database: a cluster and its finished launch. One for
    the module: every case checks that it changed nothing, so each must survive the rest."""
    d = make_module_daemon()
    rid = d.submit_async(protocol.Launch(task=Task(run="true"), cluster=fw.EXISTING_CLUSTER))
    assert d.wait_request(rid, 30).status is protocol.Status.SUCCEEDED
    assert d.wait_job(fw.EXISTING_CLUSTER, 1).status == "SUCCEEDED"
    # The daemon answers before its commit lands (group commit): compare with a settled
    # database, or every case sees the launch's last write as its own.
    assert wait_until(lambda: _settled(d.state_dir / "skyd.db"), 10)
    d.before = fw.db_state(d.state_dir / "skyd.db")
    return d


def _settled(db: Path) -> bool:
    first = fw.db_state(db)
    time.sleep(0.1)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as con:
        unfinished = con.execute("SELECT count(*) FROM requests "
                                 "WHERE status IN ('pending', 'running')").fetchone()[0]
    return unfinished == 0 and fw.db_state(db) == first


def _check_one(d, case: fw.WireCase) -> None:
    want = fw.expected(case.stream())
    frames = fw.exchange(d.socket, case)
    why = fw.check(frames, want)
    assert why == "", f"{why}\nthe rules say: {want.replies}\nthe daemon said: {frames}"
    assert d.proc.poll() is None, d.log()[-3000:]
    assert fw.db_state(d.state_dir / "skyd.db") == d.before


# ~10 s for 150 cases here.
@pytest.mark.timeout(120)
def test_every_fuzzed_connection_gets_the_rules_answer_and_changes_nothing(fuzz_daemon):
    d = fuzz_daemon

    @FUZZ
    @given(case=fw.wire_cases())
    def connection(case: fw.WireCase) -> None:
        if fw.expected(case.stream()).changes:
            return                    # a valid request that could change state: not fuzz
        _check_one(d, case)
    connection()
    assert d.call(protocol.ApiInfo()).pid == d.proc.pid
    for word in ("Traceback", "failed inside the server"):
        assert word not in d.log(), d.log()[-3000:]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", [
    fw.WireCase(False, [fw.frame(fw._enc.encode(protocol.Submit(protocol.ApiInfo())))]),   # no hello
    fw.WireCase(True, [fw.HELLO]),                                                          # hello twice
    fw.WireCase(True, [fw.frame(fw._enc.encode(protocol.Welcome(1, "x", "u", 0, False)))]),  # a server frame
    fw.WireCase(True, [fw.frame(fw._enc.encode(protocol.Submit(protocol.ApiInfo())))[:7]]),  # cut short
    fw.WireCase(True, [protocol.HEADER.pack(protocol.DEFAULT_MAX_FRAME + 1)]),             # too large
    fw.WireCase(False, [protocol.HEADER.pack(fw.HANDSHAKE_MAX_FRAME + 1)]),                # large, unsaid
    fw.WireCase(True, [fw.frame(b"\xc1"), fw.frame(fw._enc.encode(protocol.Submit(protocol.ApiInfo())))]),
    fw.WireCase(True, [fw.frame(fw._enc.encode({"t": "submit", "op": {"op": "nope"}}))]),  # unknown op
    fw.WireCase(True, [fw.frame(fw._enc.encode({"t": "submit", "op": {"op": "watch"}}))]),  # open-ended
], ids=["no-hello", "hello-twice", "server-frame", "cut-short", "too-large", "large-before-hello",
        "garbage-then-valid", "unknown-op", "watch-then-hang-up"])
def test_each_kind_of_bad_input_by_name(fuzz_daemon, case):
    """The classes the fuzzer draws from, one example each: a failure here names the class."""
    _check_one(fuzz_daemon, case)
