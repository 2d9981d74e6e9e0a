"""Fuzzing the wire: what a client can send (hypothesis strategies), what the daemon must
answer to it (a model of the session's rules, decoding with the wire contract's own
decoder), and the check of one case against a live daemon.

A case is a connection: optionally a valid hello, then some chunks of bytes — frames whose
bodies are garbage, wrong types, unknown tags, server messages, valid requests (read-only
ones: a request that could change anything is never sent), truncated or oversized frames,
raw garbage — and then the client half-closes. The daemon must answer every frame it can
read with exactly what the rules say (an Error for anything invalid, never INTERNAL), close
the connection cleanly, stay alive, and leave its database as it was.
"""

from __future__ import annotations

import functools
import socket
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import strategies as st

from skyd import protocol
from skyd.taskspec import TaskError, normalise

HANDSHAKE_MAX_FRAME = 64 * 1024        # skyd serve's default --handshake-max-frame
MAX_FRAME = protocol.DEFAULT_MAX_FRAME
_client_dec = msgspec.msgpack.Decoder(protocol.ClientMsg)
_server_dec = msgspec.msgpack.Decoder(protocol.ServerMsg)
_enc = msgspec.msgpack.Encoder()

# The names a fuzzed request may use: one cluster that exists (the fuzz daemon launches
# `base` first), others that do not.
EXISTING_CLUSTER = "base"
CLUSTER_NAMES = [EXISTING_CLUSTER, "nope", "a" * 64, "", "-x", "x\n", "managed-1", "ssh/p"]


def frame(body: bytes) -> bytes:
    return protocol.HEADER.pack(len(body)) + body


HELLO = frame(_enc.encode(protocol.Hello(protocol.PROTOCOL_VERSION, "fuzz")))


# ---- strategies ------------------------------------------------------------------------
# Each built once (lru_cache): hypothesis validates a strategy object the first time it is
# drawn from, which costs more than the draw when strategies are made anew for every case.

@functools.lru_cache(maxsize=None)
def msgpack_values(max_leaves: int = 12) -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
                     st.binary(max_size=30))
    return st.recursive(leaf, lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=10), kids, max_size=4)),
        max_leaves=max_leaves)


@functools.lru_cache(maxsize=None)
def _ints() -> st.SearchStrategy:
    return st.one_of(st.integers(-3, 5), st.sampled_from([2**31, 2**62, 2**62 + 1, 2**63 - 1, 2**63,
                                                          2**64 - 1, -(2**63)]))


@functools.lru_cache(maxsize=None)
def _ids() -> st.SearchStrategy:
    return st.one_of(st.text("0123456789abcdef-", max_size=36), st.text(max_size=12))


@functools.lru_cache(maxsize=None)
def _cluster_names() -> st.SearchStrategy:
    return st.sampled_from(CLUSTER_NAMES) | st.text(max_size=20)


@functools.lru_cache(maxsize=None)
def _plausible(name: str, tasks: st.SearchStrategy) -> st.SearchStrategy:
    """A value of the right shape for an op's field (often valid, sometimes not)."""
    names = _cluster_names()
    by_name: dict[str, st.SearchStrategy] = {
        "cluster": names, "clusters": st.lists(names, max_size=3), "pools": st.lists(names, max_size=3),
        "task": tasks, "request_id": _ids(), "request_ids": st.lists(_ids(), max_size=3),
        "job_id": _ints() | st.none(), "job_ids": st.lists(_ints(), max_size=3),
        "offset": _ints(), "limit": _ints(), "name": st.none() | st.text(max_size=20),
        "idle_minutes": st.floats(allow_nan=True) | _ints(),
        "idle_minutes_to_autostop": st.none() | st.floats(allow_nan=True),
        "timeout": st.none() | st.floats(allow_nan=True) | _ints(),
    }
    return by_name.get(name, st.booleans())


_OP_TAGS = st.sampled_from(sorted(protocol.OPS)) | st.text(max_size=12)
_MUTATIONS = st.sampled_from(["none", "wrong type", "unknown field", "no tag"])
_FIELD_NAMES = st.text(min_size=1, max_size=10)


@functools.lru_cache(maxsize=None)
def _one_of(items: tuple) -> st.SearchStrategy:
    return st.sampled_from(items)


@st.composite
def op_dicts(draw: st.DrawFn, tasks: st.SearchStrategy) -> dict:
    """An op as a client could encode it: a real tag (or not), its fields with plausible
    values, then maybe a wrong type, an unknown field, or a field dropped."""
    tag = draw(_OP_TAGS)
    cls = protocol.OPS.get(tag)
    fields = tuple(cls.__struct_fields__) if cls is not None else ()
    op: dict[str, Any] = {"op": tag}
    for f in fields:
        if draw(st.booleans()):
            op[f] = draw(_plausible(f, tasks))
    mutation = draw(_MUTATIONS)
    if mutation == "wrong type" and fields:
        op[draw(_one_of(fields))] = draw(msgpack_values())
    elif mutation == "unknown field":
        op[draw(_FIELD_NAMES)] = draw(msgpack_values())
    elif mutation == "no tag":
        del op["op"]
    return op


@functools.lru_cache(maxsize=None)
def _task_values() -> st.SearchStrategy:
    # Tasks here are small: their own fuzzing is fuzz_files.py's.
    return st.one_of(st.fixed_dictionaries({}, optional={
        "run": st.text(max_size=10) | msgpack_values(4), "setup": st.text(max_size=10),
        "num_nodes": _ints(), "name": st.text(max_size=12), "envs": msgpack_values(4),
        "resources": msgpack_values(4)}), msgpack_values(6))


_BODY_KINDS = st.sampled_from(["submit", "submit", "submit", "hello", "server", "value", "bytes"])
_SERVER_TAGS = st.sampled_from(["welcome", "accepted", "chunk", "notice", "end", "result", "error"])
_SUBMIT_TAGS = st.sampled_from(["submit", "submit", "Submit", "sub"])
_CHUNK_KINDS = st.sampled_from(["frame", "frame", "frame", "truncated", "oversized", "garbage", "empty frame"])
_OVERSIZES = st.sampled_from([HANDSHAKE_MAX_FRAME + 1, MAX_FRAME + 1, 2**32 - 1])


@functools.lru_cache(maxsize=None)
def _server_fields() -> st.SearchStrategy:
    names = st.sampled_from(["protocol", "request_id", "queue", "data", "message", "offset", "status", "code"])
    return st.dictionaries(names, msgpack_values(3), max_size=3)


@functools.lru_cache(maxsize=None)
def _submit_ops() -> st.SearchStrategy:
    return op_dicts(_task_values())


@st.composite
def message_bodies(draw: st.DrawFn) -> bytes:
    """One frame's body: mostly msgpack shaped like a message, sometimes not msgpack at all."""
    kind = draw(_BODY_KINDS)
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "value":
        return _enc.encode(draw(msgpack_values()))
    if kind == "hello":
        msg: dict[str, Any] = {"t": "hello", "protocol": draw(_ints()), "client": draw(st.text(max_size=10))}
    elif kind == "server":
        msg = {"t": draw(_SERVER_TAGS), **draw(_server_fields())}
    else:
        msg = {"t": draw(_SUBMIT_TAGS), "op": draw(_submit_ops())}
        if draw(st.booleans()):
            msg["wait"] = draw(st.booleans() | msgpack_values(2))
    body = _enc.encode(msg)
    if draw(st.integers(0, 9)) == 0:                    # a byte changed
        i = draw(st.integers(0, len(body) - 1))
        body = body[:i] + bytes([draw(st.integers(0, 255))]) + body[i + 1:]
    return body


@st.composite
def chunks(draw: st.DrawFn) -> bytes:
    """What one write sends: a frame, a frame cut short, a header lying about its size,
    or raw garbage."""
    kind = draw(_CHUNK_KINDS)
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=64))
    if kind == "empty frame":
        return frame(b"")
    if kind == "oversized":
        return protocol.HEADER.pack(draw(_OVERSIZES)) + draw(st.binary(max_size=16))
    data = frame(draw(message_bodies()))
    if kind == "truncated":
        return data[:draw(st.integers(1, len(data) - 1))]
    return data


@dataclass
class WireCase:
    hello: bool                  # a valid hello first
    chunks: list[bytes]

    def stream(self) -> bytes:
        return (HELLO if self.hello else b"") + b"".join(self.chunks)


def wire_cases() -> st.SearchStrategy[WireCase]:
    # Mostly after a valid hello: most of the rules are about what follows it.
    return st.builds(WireCase, st.sampled_from([True, True, True, False]),
                     st.lists(chunks(), min_size=1, max_size=4))


# ---- what the daemon must answer ---------------------------------------------------------

ERROR, WELCOME, ANSWER, ERROR_OR_CLOSE = "error", "welcome", "answer", "error or close"
STREAM = "a stream until the client hangs up"
# Ops whose answer is open-ended (events until the client hangs up), and ops that write
# something other than requests and clusters (tokens), by tag: a tag the contract does not
# have (an older or newer one) simply matches nothing.
OPEN_ENDED = frozenset({"watch"})
WRITES = frozenset({"token_create", "token_revoke"})


def would_change(op: protocol.Op) -> bool:
    """Could the daemon accept this op and change its state? (Such ops are never sent.)"""
    if op.__struct_config__.tag in WRITES:
        return True
    if op.schedule in (protocol.Queue.LONG, protocol.Queue.JOBS):
        task = getattr(op, "task", None)
        if task is None:
            return op.target_cluster() == EXISTING_CLUSTER
        try:
            normalise(task)
        except TaskError:
            return False
        return True
    if isinstance(op, (protocol.Autostop, protocol.CancelJobs)):
        return op.cluster == EXISTING_CLUSTER
    return False


@dataclass
class Expected:
    replies: list[str] = field(default_factory=list)
    changes: bool = False        # it holds a request that could change the daemon's state


def expected(stream: bytes) -> Expected:
    """The session's rules, applied to the bytes it will read (then end of stream)."""
    out = Expected()
    pos, greeted = 0, False
    while len(stream) - pos >= 4:
        (size,) = protocol.HEADER.unpack_from(stream, pos)
        if size > (MAX_FRAME if greeted else min(HANDSHAKE_MAX_FRAME, MAX_FRAME)):
            out.replies.append(ERROR)            # too large: said, then closed
            break
        if len(stream) - pos - 4 < size:
            break                                # cut short: the end of stream closes it
        body = stream[pos + 4:pos + 4 + size]
        pos += 4 + size
        try:
            msg = _client_dec.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            out.replies.append(ERROR)
            if not greeted:
                break
            continue
        except Exception:  # noqa: BLE001 - anything else: an error or a close will do
            out.replies.append(ERROR_OR_CLOSE)
            break
        if not greeted:
            if not isinstance(msg, protocol.Hello) or msg.protocol != protocol.PROTOCOL_VERSION:
                out.replies.append(ERROR)
                break
            out.replies.append(WELCOME)
            greeted = True
        elif not isinstance(msg, protocol.Submit):
            out.replies.append(ERROR)
        else:
            out.changes = out.changes or would_change(msg.op)
            if msg.op.__struct_config__.tag in OPEN_ENDED:
                out.replies.append(STREAM)      # it ends when we hang up: nothing after it
                break
            out.replies.append(ANSWER)
    return out


# ---- one case against a live daemon ---------------------------------------------------------

def exchange(sock_path: Path | str, case: WireCase, timeout: float = 10.0) -> list[Any]:
    """Send the case, half-close, read every frame until the daemon closes. Raises
    TimeoutError when it neither answers nor closes."""
    frames: list[Any] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        try:
            for c in ([HELLO] if case.hello else []) + case.chunks:
                s.sendall(c)
            s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass                                  # it closed on an earlier frame: read why
        buf = b""
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise TimeoutError(f"no answer and no close within {timeout}s; got {frames}") from None
            if not data:
                break
            buf += data
            while len(buf) >= 4:
                (size,) = protocol.HEADER.unpack_from(buf)
                if len(buf) < 4 + size:
                    break
                frames.append(_server_dec.decode(buf[4:4 + size]))
                buf = buf[4 + size:]
        if buf:
            frames.append(f"{len(buf)} bytes that are no frame")
    return frames


def _answers(frames: list[Any]) -> list[tuple[str, Any, int]]:
    """Group the frames as replies: (kind, its last frame, index of its first frame). A
    request's answer is everything up to its Result, Error or (--async) Accepted."""
    out: list[tuple[str, Any, int]] = []
    i = 0
    while i < len(frames):
        f = frames[i]
        if isinstance(f, protocol.Welcome):
            out.append((WELCOME, f, i))
        elif isinstance(f, protocol.Error):
            out.append((ERROR, f, i))
        else:
            j = i
            while j < len(frames) and isinstance(frames[j], (protocol.Chunk, protocol.End, protocol.Notice)):
                j += 1
            out.append((ANSWER, frames[min(j, len(frames) - 1)], i))
            i = j
        i += 1
    return out


def _internal(frame_: Any) -> bool:
    err = frame_ if isinstance(frame_, protocol.Error) else getattr(frame_, "error", None)
    return isinstance(err, protocol.Error) and err.code is protocol.ErrorCode.INTERNAL


def _stream_ok(tail: list[Any]) -> bool:
    """What an event stream may send: events and notices, maybe one final error (a watcher
    dropped, never an internal one), then nothing."""
    if tail and isinstance(tail[-1], protocol.Error):
        if _internal(tail[-1]):
            return False
        tail = tail[:-1]
    event = getattr(protocol, "Event", protocol.Notice)
    return all(isinstance(x, (protocol.Notice, event)) for x in tail)


def check(frames: list[Any], want: Expected) -> str:
    """Why the daemon's answer breaks the rules ("" when it does not)."""
    got = _answers(frames)
    for k, (kind, frame_, start) in enumerate(got):
        if isinstance(frame_, str):
            return frame_
        if k < len(want.replies) and want.replies[k] == STREAM:
            return "" if _stream_ok(frames[start:]) else f"reply {k} on: {frames[start:]} is no event stream"
        if _internal(frame_):
            return f"reply {k} is an internal error: {frame_}"
        if k >= len(want.replies):
            return f"{len(got)} replies, the rules say {len(want.replies)}: {want.replies}"
        w = want.replies[k]
        if w == ERROR_OR_CLOSE:
            return "" if kind == ERROR and k == len(got) - 1 else f"reply {k}: {frame_}, then more"
        if w == ANSWER:
            if kind not in (ANSWER, ERROR) or not isinstance(
                    frame_, (protocol.Result, protocol.Accepted, protocol.Error)):
                return f"reply {k}: {frame_} does not end a request's answer"
        elif w != kind:
            return f"reply {k} is {kind} ({frame_}), the rules say {w}"
    missing = want.replies[len(got):]
    if missing and missing not in ([ERROR_OR_CLOSE], [STREAM]):
        return f"{len(got)} replies, the rules say {len(want.replies)}: {want.replies}"
    return ""


def db_state(db_path: Path) -> list:
    """Everything in the daemon's database, to compare before and after."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as db:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return [(t, db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall()) for t in tables]

