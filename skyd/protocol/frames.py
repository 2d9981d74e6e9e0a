"""Frames: a 4-byte big-endian length, then a msgpack body, one of the message Structs
below tagged by the field "t"; and the blocking helpers skyctl and workers use to send and
receive them over plain sockets."""

from __future__ import annotations

import socket
import struct
from typing import Any

import msgspec

from skyd.protocol.errors import Error
from skyd.protocol.ops import AnyOp
from skyd.protocol.statuses import Queue, Status

PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1          # oldest client this server still speaks to
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
HEADER = struct.Struct(">I")


class Hello(msgspec.Struct, tag="hello", tag_field="t"):
    protocol: int
    client: str = ""


class Submit(msgspec.Struct, tag="submit", tag_field="t"):
    op: AnyOp
    wait: bool = True    # False: answer "accepted" and return (--async)


class Welcome(msgspec.Struct, tag="welcome", tag_field="t"):
    protocol: int
    server_version: str
    user: str
    uid: int
    admin: bool


class Accepted(msgspec.Struct, tag="accepted", tag_field="t"):
    request_id: str
    queue: Queue
    ahead: int = 0       # requests ahead of it in its queue
    job_id: int | None = None   # jobs_launch: the managed job it created


class Chunk(msgspec.Struct, tag="chunk", tag_field="t"):
    data: bytes


class Notice(msgspec.Struct, tag="notice", tag_field="t"):
    message: str         # progress for people: queued, started, reconnecting...


class End(msgspec.Struct, tag="end", tag_field="t"):
    offset: int          # bytes of log delivered so far: resume from here


class Result(msgspec.Struct, tag="result", tag_field="t", omit_defaults=True):
    request_id: str
    status: Status
    value: Any = None
    error: Error | None = None


ClientMsg = Hello | Submit
ServerMsg = Welcome | Accepted | Chunk | Notice | End | Result | Error


class FrameTooLarge(Exception):
    pass


_encoder = msgspec.msgpack.Encoder()


def encode_frame(msg: Any) -> bytes:
    buf = bytearray(4)
    _encoder.encode_into(msg, buf, 4)
    HEADER.pack_into(buf, 0, len(buf) - 4)
    return bytes(buf)


# ---- blocking helpers (skyctl and workers use plain sockets) --------------------------

def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("connection closed by peer")
        got += k
    return bytes(buf)


def recv_frame(sock: socket.socket, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    (size,) = HEADER.unpack(recv_exact(sock, 4))
    if size > max_frame:
        raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {max_frame}")
    return recv_exact(sock, size)


def send_msg(sock: socket.socket, msg: Any) -> None:
    sock.sendall(encode_frame(msg))
