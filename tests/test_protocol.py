"""The wire contract's own functions (skyd/protocol.py): framing over a real socket pair,
the frame limit, errors as sent, what an Op says about itself."""

from __future__ import annotations

import socket
import struct
import threading

import msgspec
import pytest

from skyd import protocol
from skyd.protocol import ErrorCode, Status

_dec = msgspec.msgpack.Decoder(protocol.ServerMsg | protocol.ClientMsg)


def test_a_frame_is_a_big_endian_length_then_the_msgpack_body():
    for msg in (protocol.Hello(protocol.PROTOCOL_VERSION, "test"),
                protocol.Welcome(protocol.PROTOCOL_VERSION, "1.2.3", "alice", 1001, False),
                protocol.Chunk(b"x" * 70_000)):        # a length past 16 bits
        frame = protocol.encode_frame(msg)
        body = msgspec.msgpack.encode(msg)
        assert frame == struct.pack(">I", len(body)) + body
        assert _dec.decode(frame[4:]) == msg


def test_frames_cross_a_socket_whole_however_they_are_cut():
    a, b = socket.socketpair()
    with a, b:
        msgs = [protocol.Hello(protocol.PROTOCOL_VERSION, f"c{i}") for i in range(3)]
        wire = b"".join(protocol.encode_frame(m) for m in msgs)

        def dribble() -> None:          # one byte at a time: recv_exact must loop
            for i in range(len(wire)):
                a.sendall(wire[i:i + 1])
        t = threading.Thread(target=dribble)
        t.start()
        got = [_dec.decode(protocol.recv_frame(b)) for _ in msgs]
        t.join()
        assert got == msgs
        protocol.send_msg(a, msgs[0])
        assert _dec.decode(protocol.recv_frame(b)) == msgs[0]


def test_recv_exact_reads_exactly_n_bytes_and_leaves_the_rest():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"abcdefgh")
        assert protocol.recv_exact(b, 3) == b"abc"
        assert protocol.recv_exact(b, 5) == b"defgh"
        assert protocol.recv_exact(b, 0) == b""
        a.sendall(b"xy")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError, match="^connection closed by peer$"):
            protocol.recv_exact(b, 3)           # two bytes, then the end: never a short read


def test_recv_frame_refuses_a_frame_over_the_limit_before_reading_it():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack(">I", 101))           # a header, no body sent
        with pytest.raises(protocol.FrameTooLarge, match="101 bytes exceeds the limit of 100"):
            protocol.recv_frame(b, max_frame=100)
        a.sendall(struct.pack(">I", 100) + b"z" * 100)   # exactly the limit is fine
        assert protocol.recv_frame(b, max_frame=100) == b"z" * 100
        a.sendall(struct.pack(">I", protocol.DEFAULT_MAX_FRAME + 1))
        with pytest.raises(protocol.FrameTooLarge):
            protocol.recv_frame(b)
        a.close()
        with pytest.raises(ConnectionError):
            protocol.recv_frame(b)


def test_status_finished_and_errors_on_the_wire():
    assert [s for s in Status if s.finished] == [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED]
    assert not Status.PENDING.finished and not Status.RUNNING.finished
    e = protocol.SkydError(ErrorCode.NOT_FOUND, "no cluster c", hint="see skyctl status")
    assert str(e) == "no cluster c"
    assert (e.code, e.message, e.hint) == (ErrorCode.NOT_FOUND, "no cluster c", "see skyctl status")
    assert e.to_wire() == protocol.Error(ErrorCode.NOT_FOUND, "no cluster c", "see skyctl status")
    assert protocol.SkydError(ErrorCode.BUSY, "later").to_wire() == protocol.Error(ErrorCode.BUSY,
                                                                                   "later", "")


def test_an_op_names_its_target_cluster_or_none():
    assert protocol.Stop(cluster="c1").target_cluster() == "c1"
    assert protocol.Down(cluster="c2").target_cluster() == "c2"
    assert protocol.ApiInfo().target_cluster() is None
    assert protocol.ClusterStatus().target_cluster() is None


# Every status on the wire, exactly as clients (and stored rows) have always seen them: a
# renamed member or a changed value here is a break of the wire contract and of old rows.
WIRE_VALUES = {
    protocol.Queue: ["long", "short", "inline", "jobs"],
    protocol.Status: ["pending", "running", "succeeded", "failed", "cancelled"],
    protocol.ClusterState: ["INIT", "UP", "UNHEALTHY", "STOPPED"],
    protocol.JobStatus: ["PENDING", "SETTING_UP", "RUNNING", "SUCCEEDED", "FAILED", "FAILED_SETUP",
                         "CANCELLED"],
    protocol.ManagedJobStatus: ["PENDING", "STARTING", "RUNNING", "RECOVERING", "CANCELLING",
                                "SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_PRECHECKS",
                                "FAILED_NO_RESOURCE", "FAILED_CONTROLLER", "CANCELLED"],
}


@pytest.mark.parametrize("enum_type", WIRE_VALUES, ids=lambda t: t.__name__)
def test_every_status_is_a_str_enum_sent_by_its_value(enum_type):
    import enum
    assert issubclass(enum_type, enum.StrEnum)
    assert [m.value for m in enum_type] == WIRE_VALUES[enum_type]
    for member in enum_type:
        assert member == member.value and f"{member}" == member.value     # a str, in any use
        assert msgspec.msgpack.encode(member) == msgspec.msgpack.encode(member.value)
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(member.value), type=enum_type) is member
    with pytest.raises(msgspec.ValidationError, match="Invalid enum value"):
        msgspec.msgpack.decode(msgspec.msgpack.encode("NOT_A_STATUS"), type=enum_type)


def test_records_decode_their_statuses_as_enums():
    rec = protocol.ClusterRecord(name="c", status=protocol.ClusterState.UNHEALTHY, infra="ssh/p",
                                 num_nodes=1, user="u", uid=1, launched_at=1.0)
    wire = msgspec.msgpack.encode(rec)
    assert msgspec.msgpack.decode(wire)["status"] == "UNHEALTHY"
    assert msgspec.msgpack.decode(wire, type=protocol.ClusterRecord).status is \
        protocol.ClusterState.UNHEALTHY
    job = protocol.JobRecord(cluster="c", job_id=1, name="j", status=protocol.JobStatus.RUNNING,
                             user="u", uid=1, submitted_at=1.0)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(job), type=protocol.JobRecord) == job
    # The finished and active sets partition each kind's statuses.
    assert protocol.JOB_FINISHED == set(protocol.JobStatus) - {
        protocol.JobStatus.PENDING, protocol.JobStatus.SETTING_UP, protocol.JobStatus.RUNNING}
    assert protocol.MANAGED_ACTIVE | protocol.MANAGED_FINISHED == set(protocol.ManagedJobStatus)
    assert not protocol.MANAGED_ACTIVE & protocol.MANAGED_FINISHED
    assert protocol.CLUSTER_RUNNABLE == {protocol.ClusterState.UP, protocol.ClusterState.UNHEALTHY}


def test_the_wire_contract_imports_only_the_standard_library_and_msgspec():
    """skyctl imports it: nothing of the daemon, no third-party package but msgspec (and
    what msgspec itself loads), so that its cold start stays what it is."""
    import json
    import os
    import subprocess
    import sys
    from conftest import ROOT
    code = ("import sys, json; before = set(sys.modules); import skyd.protocol; "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    # Never under CI's coverage (TESTING.md): its start-up hook imports more.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=dict(env, PYTHONPATH=str(ROOT)))
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    ours = {m for m in loaded if m.split(".")[0] == "skyd"}
    assert ours <= {"skyd", "skyd.taskspec"} | {m for m in ours if m.startswith("skyd.protocol")}
    others = {m.split(".")[0] for m in loaded} - {"skyd"}
    assert others - sys.stdlib_module_names - {"msgspec", "typing_extensions"} == set()
