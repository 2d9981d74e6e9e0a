"""Fuzzing the files people write: task YAML and the node-pool file (hypothesis strategies),
and the checks of one case.

Task YAML: skyctl's reader returns a Task or raises TaskError (a clear message), nothing
else; the daemon answers a task sent raw (as a client that skips the checks would) with
INVALID_TASK, BAD_REQUEST or — the task being valid — NOT_FOUND for the cluster it names,
never an internal error; whatever skyctl accepted, the daemon accepts too.

Node-pool file: rewritten under a running daemon (it reads the file again when it changes),
then asked for a pool that is not in it: NOT_FOUND when the file is valid, INVALID_TASK
naming the file when not, never an internal error.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import msgspec
import yaml
from hypothesis import strategies as st

from skyctl import taskfile
from skyctl.connection import Connection, ServerError
from skyd import protocol
from skyd.taskspec import SUPPORTED_RESOURCES, SUPPORTED_TOP, Task, TaskError

MISSING_CLUSTER = "fuzz-no-such-cluster"
_enc = msgspec.msgpack.Encoder()


@functools.lru_cache(maxsize=None)
def _text(max_size: int = 24) -> st.SearchStrategy[str]:
    special = st.sampled_from(["", " ", "x\n", "-x", "../x", "/", "~", "~/x", "~root/x", "s3://b/k",
                               "4+", "8GB", "0", "-1", "1e3", "ssh/", "ssh/p", "local", "\t", "é",
                               "\u0664", "a" * 300, "a\0b", "~nosuchuser/x", "x" * 70])
    free = st.text(max_size=max_size)
    return st.one_of(special, free)


@functools.lru_cache(maxsize=None)
def yaml_values(max_leaves: int = 8) -> st.SearchStrategy:
    leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), _text())
    return st.recursive(leaf, lambda kids: st.one_of(
        st.lists(kids, max_size=3), st.dictionaries(_text(8), kids, max_size=3)), max_leaves=max_leaves)


@functools.lru_cache(maxsize=None)
def _number_or_text() -> st.SearchStrategy:
    return st.one_of(st.integers(-2, 2**40), st.floats(allow_nan=True), _text(8))


@functools.lru_cache(maxsize=None)
def _mapping() -> st.SearchStrategy:
    return st.dictionaries(_text(12), st.one_of(_text(), st.integers(), st.booleans(), st.none(),
                                                st.floats()), max_size=3)


@functools.lru_cache(maxsize=None)
def _field(name: str) -> st.SearchStrategy:
    by_name: dict[str, st.SearchStrategy] = {
        "name": _text(), "workdir": _text(), "num_nodes": st.integers(-1, 70) | _text(4),
        "envs": _mapping(), "secrets": _mapping(),
        "file_mounts": st.dictionaries(_text(), _text(), max_size=2),
        "setup": _text(), "run": _text() | st.just("echo hi"),
        "resources": st.fixed_dictionaries({}, optional={
            "cpus": _number_or_text(), "memory": _number_or_text(),
            "infra": st.sampled_from(["local", "ssh/none", "ssh/", "aws", "local/x"]) | _text(8),
            "job_recovery": st.one_of(_text(8), st.fixed_dictionaries({}, optional={
                "strategy": _text(8), "max_restarts_on_errors": st.integers(-2, 200) | _text(3),
                "max_restarts": st.integers(0, 3)}))}) | yaml_values(4),
    }
    return by_name.get(name, yaml_values(4))


@st.composite
def task_docs(draw: st.DrawFn) -> Any:
    """A task as YAML gives it: mostly the supported fields with plausible values (a valid
    task now and then), sometimes an unknown field, a wrong type, or no mapping at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(yaml_values())
    keys = draw(st.lists(st.sampled_from(SUPPORTED_TOP), max_size=6, unique=True))
    doc = {k: draw(_field(k)) for k in keys}
    if draw(st.booleans()):
        doc["run"] = "echo hi"
    if draw(st.integers(0, 5)) == 0:
        doc[draw(st.sampled_from(["resource", "num-nodes", "accelerators", "service", "x"]))] = \
            draw(yaml_values(3))
    if isinstance(doc.get("resources"), dict) and draw(st.integers(0, 5)) == 0:
        doc["resources"][draw(st.sampled_from([*SUPPORTED_RESOURCES, "gpus", "region"]))] = \
            draw(yaml_values(3))
    return doc


@st.composite
def yaml_texts(draw: st.DrawFn, docs: st.SearchStrategy) -> bytes:
    """A document dumped as YAML, then maybe cut, garbled or given YAML's own traps."""
    text = yaml.safe_dump(draw(docs), allow_unicode=True, sort_keys=False)
    trap = draw(st.sampled_from(["none", "none", "none", "cut", "byte", "tab", "alias bomb",
                                 "python tag", "duplicate key", "not utf-8", "bom", "multi-doc"]))
    if trap == "cut" and text:
        text = text[:draw(st.integers(0, len(text) - 1))]
    elif trap == "byte" and text:
        i = draw(st.integers(0, len(text) - 1))
        mark = draw(st.sampled_from([":", "-", "{", "[", "'", '"', "&", "*", "!", "%", "\t", "\n"]))
        text = text[:i] + mark + text[i:]
    elif trap == "tab":
        text = text.replace("  ", "\t", 1)
    elif trap == "alias bomb":
        text = ("a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nrun: [*c, *c, *c, *c]\n")
    elif trap == "python tag":
        text += "name: !!python/object/apply:os.system ['true']\n"
    elif trap == "duplicate key":
        text += "run: again\nrun: twice\n"
    elif trap == "bom":
        text = "\ufeff" + text
    elif trap == "multi-doc":
        text += "---\nrun: second\n"
    data = text.encode()
    if trap == "not utf-8":
        data = b"\xff\xfe" + data
    return data


# ---- task YAML: the checks ------------------------------------------------------------------

def client_verdict(path: Path) -> Task | TaskError:
    """What skyctl makes of the file: a Task, or the TaskError it prints. Anything else
    raised is a defect and propagates."""
    try:
        return taskfile.load(str(path), {})
    except TaskError as e:
        return e


def _submit_raw(conn: Connection, op: dict) -> Any:
    """Send an op given as plain values (no client checks) and return the last frame."""
    msg = {"t": "submit", "op": op, "wait": False}
    assert conn.sock is not None
    conn.sock.sendall(protocol.HEADER.pack(len(body := _enc.encode(msg))) + body)
    while True:
        reply = conn.read()
        if isinstance(reply, (protocol.Error, protocol.Accepted, protocol.Result)):
            return reply


def daemon_verdict(conn: Connection, doc: Any) -> protocol.Error | protocol.Accepted | protocol.Result | None:
    """The daemon's answer to the document sent raw as an exec's task; None when msgpack
    cannot carry it (YAML integers past 64 bits)."""
    try:
        _enc.encode(doc)
    except (OverflowError, TypeError, ValueError):
        return None
    return _submit_raw(conn, {"op": "exec", "cluster": MISSING_CLUSTER, "task": doc})


def check_task(conn: Connection, path: Path, doc_bytes: bytes) -> tuple[str, Task | None]:
    """(why the case breaks a rule or "", the task when both sides accepted it)."""
    path.write_bytes(doc_bytes)
    verdict = client_verdict(path)
    if isinstance(verdict, TaskError) and not str(verdict).strip():
        return "skyctl refused the task without a message", None
    try:
        doc = yaml.safe_load(doc_bytes.decode())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        doc = None
    if doc is not None:
        raw = daemon_verdict(conn, doc)
        if raw is not None:
            why = _check_reply(raw, "a raw task")
            if why:
                return why, None
    if isinstance(verdict, TaskError):
        return "", None
    reply = _submit_raw(conn, {"op": "exec", "cluster": MISSING_CLUSTER,
                               "task": msgspec.to_builtins(verdict)})
    if not (isinstance(reply, protocol.Error) and reply.code is protocol.ErrorCode.NOT_FOUND):
        return f"skyctl accepted the task, the daemon answered {reply}", None
    return "", verdict


def _check_reply(reply: Any, what: str) -> str:
    allowed = (protocol.ErrorCode.INVALID_TASK, protocol.ErrorCode.BAD_REQUEST, protocol.ErrorCode.NOT_FOUND)
    if not isinstance(reply, protocol.Error):
        return f"{what}: the daemon answered {reply} to an exec on a cluster that does not exist"
    if reply.code not in allowed or not reply.message.strip():
        return f"{what}: the daemon answered {reply}"
    return ""


def runnable(task: Task) -> Task | None:
    """The task as one this host can run harmlessly: its own fields (envs, resources, name,
    num_nodes) kept, its commands `true`, nothing copied from this machine; None when it
    would be too big to launch in a test."""
    if task.num_nodes > 2 or (task.resources.infra or "local") != "local":
        return None
    return msgspec.structs.replace(task, setup="true" if task.setup is not None else None, run="true",
                                   workdir=None, file_mounts={})


# ---- node-pool files -----------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _host() -> st.SearchStrategy:
    fields = {"ip": st.sampled_from(["127.0.0.9", "10.0.0.1", "host-a", "::1", "-oProxyCommand=x",
                                     "a b", "[::1]"]) | _text(10),
              "port": st.integers(-1, 70000) | _text(5), "user": _text(10),
              "identity_file": _text(12), "proxy_jump": _text(12), "hostname": _text(5)}
    return st.one_of(fields["ip"], st.fixed_dictionaries({}, optional=fields), yaml_values(3))


@st.composite
def pool_docs(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(yaml_values())
    pools = {}
    for name in draw(st.lists(_text(10) | st.sampled_from(["p", "gpu-pool"]), min_size=1, max_size=3, unique=True)):
        body: Any = draw(st.fixed_dictionaries({}, optional={
            "hosts": st.lists(_host(), max_size=3) | yaml_values(2),
            "user": _text(10), "port": st.integers(-1, 70000) | _text(5),
            "identity_file": _text(12), "proxy_jump": _text(12),
            "shared_login": st.booleans() | _text(4), "region": _text(4)}))
        pools[name] = body
    return pools


def check_pool_reply(reply: Any, pool_file: Path) -> str:
    if isinstance(reply, protocol.Error) and reply.code is protocol.ErrorCode.NOT_FOUND:
        return ""
    if (isinstance(reply, protocol.Error) and reply.code is protocol.ErrorCode.INVALID_TASK
            and "node pool file is invalid" in reply.message):
        return ""
    return f"pool file {pool_file.read_bytes()[:300]!r}: the daemon answered {reply}"


def write_pool_file(path: Path, data: bytes, stamp: int) -> None:
    """Write it so that the daemon sees a change even within one clock tick."""
    path.write_bytes(data)
    os.utime(path, ns=(stamp, stamp))


def ask_for_missing_pool(conn: Connection, name: str) -> Any:
    try:
        return conn.call(protocol.InfraStatus(pools=[name]))
    except ServerError as e:
        return e.error
