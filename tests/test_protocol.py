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
