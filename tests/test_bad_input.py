"""Bad input of every kind: each case gets a clear Error with the right code, changes
nothing (no request row, no cluster), and the daemon keeps serving other clients.

Everything runs against a real `skyd serve` on a real socket, with raw frames where the
real client would never send such bytes, and the real skyctl otherwise."""

from __future__ import annotations

import json
import socket
import time

import msgspec
import pytest

from conftest import raw_frames, wait_until, write_task
from skyctl.connection import ServerError
from skyd import protocol
from skyd.protocol import (Accepted, ApiInfo, ApiStatus, Error, ErrorCode, Hello, Queue, Result,
                           Status, Submit, Welcome)
from skyd.taskspec import Resources, Task

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(protocol.ServerMsg)


# ---- helpers ------------------------------------------------------------------------------

def framed(body: bytes) -> bytes:
    """A raw body behind a correct 4-byte big-endian length."""
    return protocol.HEADER.pack(len(body)) + body


def submit_body(op: dict, wait: bool = True) -> bytes:
    """A Submit frame built by hand, so its op may be anything."""
    return framed(_enc.encode({"t": "submit", "op": op, "wait": wait}))


def long_ids(d) -> set[str]:
    """Ids of every stored (long) request, of every user and status: the request rows."""
    recs = d.call(ApiStatus(all_statuses=True, all_users=True, limit=10_000))
    return {r.id for r in recs if r.queue is Queue.LONG}


def clusters(d) -> dict[str, str]:
    return {c.name: c.status for c in d.call(protocol.ClusterStatus(all_users=True))}


def assert_serving(d) -> None:
    """A fresh connection still gets a full answer from the same daemon process."""
    assert d.proc is not None and d.proc.poll() is None, d.log()
    info = d.call(ApiInfo())
    assert info.pid == d.proc.pid
    assert info.protocol == protocol.PROTOCOL_VERSION


def read_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the peer closed the connection (EOF) within `timeout`."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def setup_only(cluster: str, setup: str = "true") -> protocol.Launch:
    return protocol.Launch(task=Task(setup=setup), cluster=cluster)


def launched(d, cluster: str, run: str | None = None, setup: str | None = "true") -> str:
    """Launch synchronously (in-process client); the request id."""
    msgs = d.frames(protocol.Launch(task=Task(setup=setup, run=run), cluster=cluster))
    assert isinstance(msgs[-1], Result) and msgs[-1].status is Status.SUCCEEDED, msgs
    return msgs[0].request_id


@pytest.fixture(scope="module")
def served(make_module_daemon):
    """One daemon for the tests that launch nothing: each checks that its bad input changed
    nothing (no request row, no cluster, still serving), so they share it, and it must
    survive all of them. Tests that launch something get a daemon of their own."""
    return make_module_daemon()


# ---- framing and decoding ---------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    pytest.param(b"\xc1", id="invalid-opcode"),
    pytest.param(b"", id="empty-body"),
    pytest.param(b"\x92\x01", id="truncated-array"),
    pytest.param(b"\x83\xa1t\xa6submit", id="truncated-map"),
])
def test_malformed_msgpack_is_bad_request_and_the_connection_goes_on(served, body):
    before = long_ids(served)
    out = raw_frames(served.socket, [framed(body), protocol.encode_frame(Submit(ApiInfo())),
                                     protocol.encode_frame(Submit(protocol.ClusterStatus()))])
    assert isinstance(out[0], Welcome)
    assert isinstance(out[1], Error) and out[1].code is ErrorCode.BAD_REQUEST, out
    assert "malformed" in out[1].message
    # The same connection answers the next, valid, requests.
    assert isinstance(out[2], Result) and out[2].status is Status.SUCCEEDED, out
    assert msgspec.convert(out[2].value, protocol.ServerInfo).pid == served.proc.pid
    assert isinstance(out[3], Result) and out[3].value == [], out
    assert long_ids(served) == before
    assert_serving(served)


@pytest.mark.parametrize("body", [
    pytest.param(_enc.encode([1, 2, 3]), id="array-not-map"),
    pytest.param(_enc.encode({"t": "bogus"}), id="unknown-frame-tag"),
    pytest.param(_enc.encode({"op": {"op": "api_info"}}), id="no-frame-tag"),
    pytest.param(_enc.encode({"t": "submit"}), id="submit-without-op"),
    pytest.param(_enc.encode({"t": "submit", "op": {"op": "api_info", "extra": 1}}),
                 id="unknown-op-field"),
    pytest.param(_enc.encode({"t": "submit", "op": {"op": "queue", "cluster": 5}}),
                 id="cluster-not-a-string"),
    pytest.param(_enc.encode({"t": "submit", "op": {"op": "api_info"}, "wait": "yes"}),
                 id="wait-not-a-bool"),
    pytest.param(_enc.encode({"t": "submit", "op": {"op": "logs", "cluster": "c",
                                                   "job_id": "one"}}), id="job-id-not-int"),
])
def test_valid_msgpack_with_wrong_shape_is_bad_request(served, body):
    before = long_ids(served)
    out = raw_frames(served.socket, [framed(body), protocol.encode_frame(Submit(ApiInfo()))])
    assert isinstance(out[1], Error) and out[1].code is ErrorCode.BAD_REQUEST, out
    assert out[1].message.startswith("malformed request:"), out[1]
    assert isinstance(out[2], Result) and out[2].status is Status.SUCCEEDED, out
    assert long_ids(served) == before
    assert_serving(served)


@pytest.mark.parametrize("task, field", [
    pytest.param({"num_nodes": "two", "run": "echo hi"}, "num_nodes", id="num-nodes-string"),
    pytest.param({"run": ["echo", "hi"]}, "run", id="run-a-list"),
    pytest.param({"run": "echo", "resources": {"cpus": [4]}}, "resources.cpus", id="cpus-list"),
    pytest.param({"run": "echo", "envs": "A=1"}, "envs", id="envs-string"),
    pytest.param({"run": "echo", "gpus": 1}, "gpus", id="unknown-task-field"),
    pytest.param("echo hi", "task", id="task-a-string"),
])
def test_wrong_types_inside_a_task_are_invalid_task(served, task, field):
    """session._decode_error: anything wrong at `$.op.task...` is INVALID_TASK."""
    before = long_ids(served)
    out = raw_frames(served.socket, [submit_body({"op": "launch", "task": task,
                                                  "cluster": "typed"})])
    err = out[1]
    assert isinstance(err, Error) and err.code is ErrorCode.INVALID_TASK, out
    assert err.message.startswith("invalid task:")
    assert field.split(".")[-1] in err.message, err
    assert long_ids(served) == before
    assert clusters(served) == {}
    assert_serving(served)


def test_unknown_op_tag_is_unknown_op(served):
    before = long_ids(served)
    out = raw_frames(served.socket, [submit_body({"op": "teleport", "cluster": "c"}),
                                     protocol.encode_frame(Submit(ApiInfo()))])
    err = out[1]
    assert isinstance(err, Error) and err.code is ErrorCode.UNKNOWN_OP, out
    assert "teleport" in err.message
    assert "upgrade" in err.hint
    # The stream is still framed: the same connection goes on.
    assert isinstance(out[2], Result) and out[2].status is Status.SUCCEEDED, out
    assert long_ids(served) == before
    assert_serving(served)


def test_a_second_hello_is_bad_request_and_the_connection_goes_on(served):
    out = raw_frames(served.socket, [protocol.encode_frame(Hello(protocol.PROTOCOL_VERSION)),
                                     protocol.encode_frame(Submit(ApiInfo()))])
    assert isinstance(out[1], Error) and out[1].code is ErrorCode.BAD_REQUEST, out
    assert isinstance(out[2], Result) and out[2].status is Status.SUCCEEDED, out


# ---- size limits ---------------------------------------------------------------------------

def test_header_over_the_limit_is_too_large_and_closes_the_connection(make_daemon):
    d = make_daemon("--max-frame", "65536")
    before = long_ids(d)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(d.socket))
        protocol.send_msg(s, Hello(protocol.PROTOCOL_VERSION, "test"))
        assert isinstance(_dec.decode(protocol.recv_frame(s)), Welcome)
        # Claims 1 MiB; sends only the start of it. The server must not wait for the rest.
        s.sendall(protocol.HEADER.pack(1024 * 1024) + b"\x00" * 100)
        err = _dec.decode(protocol.recv_frame(s))
        assert isinstance(err, Error) and err.code is ErrorCode.TOO_LARGE, err
        assert "1048576" in err.message and "65536" in err.message
        assert read_closed(s), "the connection should be closed after TOO_LARGE"
    assert long_ids(d) == before
    assert_serving(d)


def test_header_over_the_limit_before_hello_is_too_large(make_daemon):
    d = make_daemon("--max-frame", "65536")
    out = raw_frames(d.socket, [protocol.HEADER.pack(10 * 1024 * 1024)], hello=False, read=2)
    assert isinstance(out[0], Error) and out[0].code is ErrorCode.TOO_LARGE, out
    assert out[1] is None        # closed
    assert_serving(d)


def test_a_real_oversized_launch_is_too_large(make_daemon, workdir):
    d = make_daemon("--max-frame", "65536")
    before = long_ids(d)
    op = protocol.Launch(task=Task(run="echo " + "x" * (200 * 1024)), cluster="big")
    with d.connect() as c:
        msgs = list(c.submit(op))
    assert len(msgs) == 1 and isinstance(msgs[0], Error), msgs
    assert msgs[0].code is ErrorCode.TOO_LARGE
    assert long_ids(d) == before
    assert clusters(d) == {}
    assert_serving(d)


def test_a_real_oversized_launch_through_the_cli_exits_2(make_daemon, workdir):
    d = make_daemon("--max-frame", "65536")
    before = long_ids(d)
    big = write_task(workdir, "big.yaml", "run: |\n" + ("  echo " + "x" * 100 + "\n") * 2000)
    assert 200_000 < big.stat().st_size < 1024 * 1024
    p = d.skyctl("launch", str(big), "-c", "big")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "exceeds the limit" in p.stderr
    assert long_ids(d) == before
    assert clusters(d) == {}
    assert_serving(d)


def test_an_oversized_launch_bigger_than_the_socket_buffers_still_says_too_large(
        make_daemon, workdir):
    d = make_daemon("--max-frame", "65536")
    before = long_ids(d)
    big = write_task(workdir, "big.yaml", "run: |\n" + ("  echo " + "x" * 100 + "\n") * 8000)
    assert 800_000 < big.stat().st_size < 1024 * 1024      # a task file skyctl accepts
    p = d.skyctl("launch", str(big), "-c", "big")
    assert long_ids(d) == before
    assert clusters(d) == {}
    assert_serving(d)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "exceeds the limit" in p.stderr


# ---- handshake -----------------------------------------------------------------------------

def test_no_hello_first_is_bad_request(served):
    before = long_ids(served)
    out = raw_frames(served.socket, [protocol.encode_frame(Submit(setup_only("nohello")))],
                     hello=False, read=2)
    assert isinstance(out[0], Error) and out[0].code is ErrorCode.BAD_REQUEST, out
    assert "hello" in out[0].message
    assert out[1] is None                      # the connection is closed
    assert long_ids(served) == before
    assert clusters(served) == {}
    assert_serving(served)


def test_protocol_too_new_is_unsupported_version_with_upgrade_hint(served):
    out = raw_frames(served.socket,
                     [protocol.encode_frame(Hello(protocol.PROTOCOL_VERSION + 1, "future"))],
                     hello=False, read=2)
    err = out[0]
    assert isinstance(err, Error) and err.code is ErrorCode.UNSUPPORTED_VERSION, out
    assert f"v{protocol.PROTOCOL_VERSION + 1}" in err.message
    assert "upgrade" in err.hint.lower()
    assert out[1] is None
    assert_serving(served)


def test_protocol_too_old_is_unsupported_version(served):
    out = raw_frames(served.socket, [protocol.encode_frame(Hello(0, "ancient"))],
                     hello=False, read=2)
    err = out[0]
    assert isinstance(err, Error) and err.code is ErrorCode.UNSUPPORTED_VERSION, out
    assert "v0" in err.message
    assert "upgrade" in err.hint.lower()
    assert out[1] is None
    assert_serving(served)


# ---- clients that misbehave at the socket level ---------------------------------------------

def test_half_a_header_or_garbage_then_disconnect_leaves_the_daemon_serving(daemon):
    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(daemon.socket))
        return s

    # Half a header, then gone (before and after the handshake).
    with connect() as s:
        s.sendall(b"\x00\x00")
    with connect() as s:
        protocol.send_msg(s, Hello(protocol.PROTOCOL_VERSION))
        s.sendall(b"\x00\x00\x01")
    # A header, half a body, then gone.
    with connect() as s:
        protocol.send_msg(s, Hello(protocol.PROTOCOL_VERSION))
        s.sendall(protocol.HEADER.pack(100) + b"\x81")
    # Garbage, then gone without reading the answer.
    with connect() as s:
        s.sendall(bytes(range(256)) * 4)
    with connect() as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        # "GET " read as a length is over 1 GB: answered TOO_LARGE and closed.
        err = _dec.decode(protocol.recv_frame(s))
        assert isinstance(err, Error) and err.code is ErrorCode.TOO_LARGE
        assert read_closed(s)
    # A client stuck halfway through a header does not hold anyone else up.
    stuck = connect()
    try:
        protocol.send_msg(stuck, Hello(protocol.PROTOCOL_VERSION))
        stuck.recv(4096)
        stuck.sendall(b"\x00")
        t0 = time.monotonic()
        assert_serving(daemon)
        launched(daemon, "after-garbage")
        assert time.monotonic() - t0 < 10
    finally:
        stuck.close()
    assert clusters(daemon) == {"after-garbage": "UP"}
    assert_serving(daemon)
    assert "Traceback" not in daemon.log(), daemon.log()


# ---- bad task files through the real CLI ---------------------------------------------------

@pytest.mark.parametrize("name, body, expect", [
    pytest.param("syntax.yaml", "run: [echo hi\nsetup: {\n", "is not valid YAML", id="yaml-syntax"),
    pytest.param("list.yaml", "- run: echo hi\n- run: echo again\n", "must be a mapping",
                 id="yaml-list"),
    pytest.param("scalar.yaml", "just a string\n", "must be a mapping", id="yaml-scalar"),
    pytest.param("empty.yaml", "# nothing\n", "is empty", id="yaml-empty"),
    pytest.param("unknown.yaml", "run: echo hi\ngpus: 1\n", "`gpus`", id="unknown-top-field"),
    pytest.param("acc.yaml", "run: echo hi\nresources:\n  use_spot: true\n",
                 "resources.use_spot", id="unknown-resources-field"),
    pytest.param("nothing.yaml", "name: idle\nenvs:\n  A: 1\n", "neither `run` nor `setup`",
                 id="neither-run-nor-setup"),
    pytest.param("nodes.yaml", "run: echo hi\nnum_nodes: 0\n", "num_nodes", id="zero-nodes"),
    pytest.param("infra.yaml", "run: echo hi\nresources:\n  infra: gcp\n", "resources.infra",
                 id="unknown-infra"),
    pytest.param("types.yaml", "run: echo hi\nnum_nodes: two\n", "num_nodes", id="wrong-type"),
])
def test_bad_task_file_exits_2_with_a_clear_message(served, workdir, name, body, expect):
    before = long_ids(served)
    path = write_task(workdir, name, body)
    p = served.skyctl("launch", str(path), "-c", "badtask")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "error: invalid task" in p.stderr, p.stderr
    assert expect in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert long_ids(served) == before
    assert clusters(served) == {}
    cli = served.skyctl("api", "status", "-a", "--json", check=True)
    assert "launch" not in cli.stdout


def test_task_file_over_1_mib_is_refused_before_reading(served, workdir):
    before = long_ids(served)
    path = write_task(workdir, "huge.yaml", "run: echo hi\n# " + "x" * (1024 * 1024) + "\n")
    p = served.skyctl("launch", str(path), "-c", "huge")
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "at most 1048576 bytes" in p.stderr
    assert long_ids(served) == before
    assert clusters(served) == {}


def test_missing_task_file_exits_2(served, workdir):
    p = served.skyctl("launch", str(workdir / "nowhere.yaml"), "-c", "x")
    assert p.returncode == 2
    assert "does not exist" in p.stderr
    assert clusters(served) == {}


# ---- tasks the client would refuse, sent straight over the wire ---------------------------------
# The daemon validates a task again when the frame arrives: a raw client can skip skyctl's
# checks; the daemon must refuse such a task as INVALID_TASK before accepting it.

@pytest.mark.parametrize("task", [
    pytest.param(Task(run="echo hi", resources=Resources(infra="gcp")), id="unknown-infra"),
    pytest.param(Task(run="echo hi", resources=Resources(cpus="lots")), id="bad-cpus"),
    pytest.param(Task(name="idle"), id="neither-run-nor-setup"),
    pytest.param(Task(run="echo hi", num_nodes=0), id="zero-nodes"),
    pytest.param(Task(run="echo hi", envs={"A=B": "1"}), id="bad-env-name"),
])
def test_task_the_client_would_refuse_is_invalid_task_on_the_wire(served, task):
    before = long_ids(served)
    out = raw_frames(served.socket, [protocol.encode_frame(
        Submit(protocol.Launch(task=task, cluster="wire"), wait=False))])
    err = out[1]
    try:
        assert isinstance(err, Error) and err.code is ErrorCode.INVALID_TASK, out
        assert long_ids(served) == before
        assert clusters(served) == {}
    finally:
        if isinstance(err, Accepted):         # let it end before the served is stopped
            served.wait_request(err.request_id)
    assert_serving(served)


# ---- names and ids that do not exist --------------------------------------------------------

@pytest.fixture(scope="module")
def with_real(make_module_daemon):
    """A daemon with one cluster, `real`, shared by the not-found cases: each checks that
    it changed nothing."""
    d = make_module_daemon(name="real")
    launched(d, "real")
    return d


@pytest.mark.parametrize("op", [
    pytest.param(protocol.JobQueue(cluster="ghost"), id="queue"),
    pytest.param(protocol.JobLogs(cluster="ghost"), id="logs"),
    pytest.param(protocol.JobLogs(cluster="ghost", job_id=1, follow=False), id="logs-job"),
    pytest.param(protocol.CancelJobs(cluster="ghost", all=True), id="cancel"),
    pytest.param(protocol.ClusterStatus(clusters=["ghost"]), id="status"),
    pytest.param(protocol.Exec(task=Task(run="echo hi"), cluster="ghost"), id="exec"),
    pytest.param(protocol.Down(cluster="ghost"), id="down"),
    pytest.param(protocol.Stop(cluster="ghost"), id="stop"),
    pytest.param(protocol.Start(cluster="ghost"), id="start"),
])
def test_unknown_cluster_is_not_found(with_real, op):
    daemon = with_real
    before = long_ids(daemon)
    with pytest.raises(ServerError) as e:
        daemon.call(op)
    assert e.value.error.code is ErrorCode.NOT_FOUND, e.value.error
    assert "'ghost'" in e.value.error.message
    assert long_ids(daemon) == before           # long ops are refused before acceptance
    assert clusters(daemon) == {"real": "UP"}
    assert_serving(daemon)


@pytest.mark.parametrize("args", [
    ("queue", "ghost"), ("logs", "ghost"), ("cancel", "ghost", "1"), ("down", "ghost"),
    ("exec", "-c", "ghost", "echo hi"), ("status", "ghost"),
], ids=lambda a: a[0])
def test_unknown_cluster_through_the_cli_exits_2(served, args):
    before = long_ids(served)
    p = served.skyctl(*args)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "cluster 'ghost' does not exist" in p.stderr
    assert long_ids(served) == before


def test_unknown_job_on_an_existing_cluster_is_not_found(daemon):
    launched(daemon, "jobs", run="true", setup=None)
    daemon.wait_job("jobs", 1)
    launched(daemon, "nojobs")                    # setup only: a cluster without jobs
    for op, text in [
        (protocol.JobLogs(cluster="jobs", job_id=2, follow=False), "has no job 2"),
        (protocol.CancelJobs(cluster="jobs", job_ids=[2]), "has no job 2"),
        (protocol.JobLogs(cluster="nojobs"), "has no jobs yet"),
        (protocol.CancelJobs(cluster="nojobs", job_ids=[1]), "has no job 1"),
    ]:
        with pytest.raises(ServerError) as e:
            daemon.call(op)
        assert e.value.error.code is ErrorCode.NOT_FOUND, (op, e.value.error)
        assert text in e.value.error.message, (op, e.value.error)
    p = daemon.skyctl("logs", "jobs", "7", "--no-follow")
    assert p.returncode == 2 and "has no job 7" in p.stderr, p.stderr
    p = daemon.skyctl("cancel", "jobs", "7")
    assert p.returncode == 2 and "has no job 7" in p.stderr, p.stderr
    # The existing job is untouched.
    jobs = daemon.call(protocol.JobQueue(cluster="jobs"))
    assert [(j.job_id, j.status) for j in jobs] == [(1, "SUCCEEDED")]


def test_request_id_matching_nothing_or_not_hex(daemon):
    rid = launched(daemon, "ids")
    before = long_ids(daemon)
    nomatch = "ffffffff" if not rid.startswith("ffffffff") else "00000000"
    for op, code in [
        (protocol.ApiLogs(request_id=nomatch), ErrorCode.NOT_FOUND),
        (protocol.ApiStatus(request_ids=[nomatch]), ErrorCode.NOT_FOUND),
        (protocol.ApiCancel(request_ids=[nomatch]), ErrorCode.NOT_FOUND),
        (protocol.ApiCancel(request_ids=["zzz"]), ErrorCode.BAD_REQUEST),
        (protocol.ApiLogs(request_id="zzz"), ErrorCode.BAD_REQUEST),
        (protocol.ApiStatus(request_ids=["12/34"]), ErrorCode.BAD_REQUEST),
        (protocol.ApiLogs(request_id=""), ErrorCode.BAD_REQUEST),
        (protocol.ApiLogs(request_id="a" * 37), ErrorCode.BAD_REQUEST),
    ]:
        msgs = daemon.frames(op)
        assert len(msgs) == 1 and isinstance(msgs[0], Error), (op, msgs)
        assert msgs[0].code is code, (op, msgs[0])
    p = daemon.skyctl("api", "logs", nomatch)
    assert p.returncode == 2 and f"no request matches '{nomatch}'" in p.stderr, p.stderr
    p = daemon.skyctl("api", "cancel", "zzz")
    assert p.returncode == 2 and "'zzz' is not a request id" in p.stderr, p.stderr
    assert long_ids(daemon) == before
    assert daemon.request(rid).status is Status.SUCCEEDED


def test_ambiguous_request_prefix_lists_the_candidates(daemon):
    # Synchronous launches, and no polling: every short request (api status...) is kept in
    # a ring that prefixes also match, so make none before the ambiguous lookups.
    by_first: dict[str, str] = {}
    pair = None
    for i in range(17):                        # 16 hex digits: 17 ids must share one
        msgs = daemon.frames(setup_only(f"amb{i}"))
        assert isinstance(msgs[-1], Result) and msgs[-1].status is Status.SUCCEEDED, msgs
        rid = msgs[0].request_id
        if rid[0] in by_first:
            pair = (by_first[rid[0]], rid)
            break
        by_first[rid[0]] = rid
    assert pair is not None
    prefix = pair[0][0]
    # At most 2 long + 3 short requests can match below: the listing (5) shows both ids.
    for op in (protocol.ApiStatus(request_ids=[prefix]), protocol.ApiLogs(request_id=prefix),
               protocol.ApiCancel(request_ids=[prefix])):
        msgs = daemon.frames(op)
        err = msgs[-1]
        assert len(msgs) == 1 and isinstance(err, Error), (op, msgs)
        assert err.code is ErrorCode.AMBIGUOUS, (op, err)
        assert f"{prefix!r} matches" in err.message
        assert pair[0] in err.message and pair[1] in err.message, err
        assert "more of the id" in err.hint
    p = daemon.skyctl("api", "status", prefix)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "matches" in p.stderr and pair[0] in p.stderr and pair[1] in p.stderr, p.stderr
    # A longer prefix resolves to exactly one; nothing was cancelled.
    recs = daemon.call(protocol.ApiStatus(request_ids=[pair[1][:8]]))
    assert [(r.id, r.status) for r in recs] == [(pair[1], Status.SUCCEEDED)]


def test_cancel_of_a_finished_request_is_conflict(daemon):
    rid = launched(daemon, "done")
    with pytest.raises(ServerError) as e:
        daemon.call(protocol.ApiCancel(request_ids=[rid[:8]]))
    assert e.value.error.code is ErrorCode.CONFLICT
    assert f"request {rid} already finished (succeeded)" in e.value.error.message
    p = daemon.skyctl("api", "cancel", rid)     # already in that state: 0, said on stderr
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert "already finished" in p.stderr
    assert daemon.request(rid).status is Status.SUCCEEDED
    assert clusters(daemon) == {"done": "UP"}


# ---- the client goes away; the request does not --------------------------------------------

def test_disconnect_right_after_accepted_does_not_cancel(daemon, workdir):
    marker = workdir / "finished-marker"
    op = protocol.Launch(task=Task(setup=f"sleep 1; touch {marker}"), cluster="orphan")
    conn = daemon.connect()
    frames = conn.submit(op, wait=True)
    first = next(frames)
    assert isinstance(first, Accepted), first
    conn.close()                                # gone mid-request, before any log or result
    rec = daemon.wait_request(first.request_id)
    assert rec.status is Status.SUCCEEDED, rec
    assert marker.exists()
    assert clusters(daemon) == {"orphan": "UP"}
    assert_serving(daemon)


# ---- a task that only fails once it runs ------------------------------------------------------

def test_exec_with_a_missing_workdir_fails_naming_it(daemon, workdir):
    launched(daemon, "wd")
    missing = workdir / "no-such-dir"
    msgs = daemon.frames(protocol.Exec(task=Task(run="echo should-not-run",
                                                 workdir=str(missing)), cluster="wd"))
    assert isinstance(msgs[0], Accepted), msgs
    res = msgs[-1]
    assert isinstance(res, Result) and res.status is Status.FAILED, msgs
    assert res.error is not None and str(missing) in res.error.message, res
    assert daemon.request(res.request_id).status is Status.FAILED
    # The job it would have run is not left pending, and never ran.
    assert wait_until(lambda: all(j.status in protocol.JOB_FINISHED for j in
                                  daemon.call(protocol.JobQueue(cluster="wd"))), 5)
    jobs = daemon.call(protocol.JobQueue(cluster="wd"))
    assert [(j.job_id, j.status) for j in jobs] == [(1, "FAILED")]
    # Through the CLI: a non-zero exit and the workdir named on stderr.
    p = daemon.skyctl("exec", "-c", "wd", "--workdir", str(missing), "echo should-not-run")
    assert p.returncode != 0
    assert str(missing) in p.stderr
    assert "should-not-run" not in p.stdout
    assert clusters(daemon) == {"wd": "UP"}


# ---- names with a trailing newline, targets that climb out, ids out of range ----------------

@pytest.mark.parametrize("name", [
    pytest.param("adev\n", id="trailing-newline"),
    pytest.param("adev\n\n", id="two-newlines"),
    pytest.param("ADEV\n", id="upper-trailing-newline"),
    pytest.param("\u212adev", id="kelvin-sign"),       # [a-z] with IGNORECASE would take it
])
def test_a_cluster_name_with_a_trailing_newline_is_refused(daemon, name):
    launched(daemon, "adev")
    before = long_ids(daemon)
    with pytest.raises(ServerError) as e:
        daemon.call(setup_only(name))
    assert e.value.error.code is ErrorCode.BAD_REQUEST, e.value.error
    assert f"invalid cluster name {name!r}" in e.value.error.message
    p = daemon.skyctl("launch", "-c", name, "echo hi")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "invalid cluster name" in p.stderr
    assert long_ids(daemon) == before
    assert clusters(daemon) == {"adev": "UP"}          # no second "adev"
    assert_serving(daemon)


@pytest.mark.parametrize("task, field", [
    pytest.param(Task(run="true", name="train\n"), "name", id="task-name"),
    pytest.param(Task(run="true", envs={"A\n": "1"}), "envs", id="env-name"),
    pytest.param(Task(run="true", secrets={"B\n": "1"}), "secrets", id="secret-name"),
])
def test_task_names_with_a_trailing_newline_are_invalid_on_the_wire(served, task, field):
    before = long_ids(served)
    for op in (protocol.Launch(task=task, cluster="wire"), protocol.JobsLaunch(task=task)):
        out = raw_frames(served.socket, [protocol.encode_frame(Submit(op, wait=False))])
        assert isinstance(out[1], Error) and out[1].code is ErrorCode.INVALID_TASK, out
        assert f"{field}:" in out[1].message, out[1]
    assert long_ids(served) == before
    assert clusters(served) == {}
    assert served.call(protocol.JobsQueue()) == []
    assert_serving(served)


@pytest.mark.parametrize("target", [
    "../../other/x", "/a/../../b", "~/../other/.ssh/authorized_keys", "x/..", "..", "~root/x",
])
def test_a_file_mounts_target_that_climbs_out_is_refused(served, workdir, target):
    src = workdir / "payload.txt"
    src.write_text("payload\n")
    before = long_ids(served)
    # The real client refuses it, naming the field...
    path = write_task(workdir, "mounts.yaml",
                      f"file_mounts:\n  {json.dumps(target)}: {src}\nrun: 'true'\n")
    p = served.skyctl("launch", str(path), "-c", "mounts")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"file_mounts: target {target!r}" in p.stderr, p.stderr
    # ... and so does the served, for a raw client that skips skyctl's checks.
    task = Task(run="true", file_mounts={target: str(src)})
    for op in (protocol.Launch(task=task, cluster="mounts"), protocol.JobsLaunch(task=task)):
        out = raw_frames(served.socket, [protocol.encode_frame(Submit(op, wait=False))])
        assert isinstance(out[1], Error) and out[1].code is ErrorCode.INVALID_TASK, out
        assert f"file_mounts: target {target!r}" in out[1].message, out[1]
    assert long_ids(served) == before
    assert clusters(served) == {}
    assert not list(workdir.glob("**/other"))
    assert_serving(served)


def test_targets_that_stay_on_the_node_are_still_accepted(daemon, workdir):
    src = workdir / "payload.txt"
    src.write_text("payload\n")
    task = Task(run="cat ../a..b/p.txt ../inner/q.txt ../r.txt",
                file_mounts={"a..b/p.txt": str(src), "/inner/q.txt": str(src),
                             "~/r.txt": str(src)})
    msgs = daemon.frames(protocol.Launch(task=task, cluster="mounts"))
    assert isinstance(msgs[-1], Result) and msgs[-1].status is Status.SUCCEEDED, msgs
    job = daemon.wait_job("mounts", 1)
    assert job.status == "SUCCEEDED", job


HUGE = 2**63 + 5


@pytest.fixture(scope="module")
def with_job(make_module_daemon):
    """A daemon with cluster `ids` and its job 1 (it printed "out"), shared by the cases
    below: each checks that its bad id changed nothing."""
    d = make_module_daemon(name="ids")
    launched(d, "ids", run="echo out", setup=None)
    d.wait_job("ids", 1)
    return d


@pytest.mark.parametrize("op, field", [
    pytest.param({"op": "logs", "cluster": "ids", "job_id": HUGE}, "job_id", id="logs-huge"),
    pytest.param({"op": "logs", "cluster": "ids", "job_id": 2**64 - 1}, "job_id",
                 id="logs-uint64-max"),
    pytest.param({"op": "logs", "cluster": "ids", "job_id": -1}, "job_id", id="logs-negative"),
    pytest.param({"op": "logs", "cluster": "ids", "job_id": 0}, "job_id", id="logs-zero"),
    pytest.param({"op": "logs", "cluster": "ids", "job_id": 1, "offset": HUGE}, "offset",
                 id="logs-offset"),
    pytest.param({"op": "logs", "cluster": "ids", "job_id": 1, "offset": -5}, "offset",
                 id="logs-negative-offset"),
    pytest.param({"op": "cancel", "cluster": "ids", "job_ids": [1, HUGE]}, "job_ids[1]",
                 id="cancel"),
    pytest.param({"op": "jobs_logs", "job_id": HUGE}, "job_id", id="jobs-logs"),
    pytest.param({"op": "jobs_logs", "job_id": 1, "offset": -2**63}, "offset",
                 id="jobs-logs-offset"),
    pytest.param({"op": "jobs_cancel", "job_ids": [HUGE]}, "job_ids[0]", id="jobs-cancel"),
    pytest.param({"op": "jobs_queue", "job_ids": [-3]}, "job_ids[0]", id="jobs-queue"),
    pytest.param({"op": "jobs_queue", "limit": HUGE}, "limit", id="jobs-queue-limit"),
    pytest.param({"op": "api_logs", "request_id": "ab", "offset": HUGE}, "offset",
                 id="api-logs-offset"),
])
def test_ids_out_of_range_are_bad_request_without_a_traceback(with_job, op, field):
    daemon = with_job
    before = long_ids(daemon)
    out = raw_frames(daemon.socket, [submit_body(op), protocol.encode_frame(Submit(ApiInfo()))])
    err = out[1]
    assert isinstance(err, Error) and err.code is ErrorCode.BAD_REQUEST, out
    assert err.message.startswith("malformed request:") and f"`$.op.{field}`" in err.message, err
    assert isinstance(out[2], Result) and out[2].status is Status.SUCCEEDED, out  # goes on
    assert long_ids(daemon) == before
    assert "Traceback" not in daemon.log()
    assert_serving(daemon)


def test_logs_with_a_huge_job_id_through_the_cli(with_job):
    daemon = with_job
    for bad in (str(HUGE), str(2**70), "-1", "0"):       # 2**70: more than msgpack carries
        for args in (("logs", "ids", bad, "--no-follow"), ("cancel", "ids", bad),
                     ("jobs", "logs", bad, "--no-follow"), ("jobs", "cancel", bad),
                     ("jobs", "queue", bad)):
            p = daemon.skyctl(*args)
            assert p.returncode == 2, (args, p.returncode, p.stdout, p.stderr)
            assert f"{bad} is not a job id" in p.stderr, (args, p.stderr)
            assert "Traceback" not in p.stderr, (args, p.stderr)
    assert "Traceback" not in daemon.log()
    p = daemon.skyctl("logs", "ids", "1", "--no-follow")
    assert p.returncode == 0 and p.stdout == "out\n", (p.returncode, p.stdout, p.stderr)
    assert_serving(daemon)
