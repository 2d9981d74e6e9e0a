"""`skyctl dial-stdio`, the bridge an ssh:// client runs on the VM, as a real subprocess on
the daemon's real socket: the bytes pass both ways untouched (the client's own handshake
and requests), the client's EOF is a half-close the daemon still answers, and each way the
socket can fail has its exit status (skyctl.remote reads them: 4, 5, 75).
(Through a real sshd as real users: test_remote_client.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import msgspec

from conftest import ROOT
from skyd import protocol
from skyd.taskspec import Task

DIAL_TIMEOUT = 30


def _dial(host: str, stdio: socket.socket | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "skyctl", "dial-stdio", "--host", host],
                            stdin=stdio if stdio is not None else subprocess.DEVNULL,
                            stdout=stdio if stdio is not None else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)


def _read(sock: socket.socket) -> protocol.ServerMsg:
    return msgspec.msgpack.decode(protocol.recv_frame(sock), type=protocol.ServerMsg)


def test_the_bridge_carries_a_clients_handshake_and_requests_both_ways(daemon):
    ours, theirs = socket.socketpair()
    ours.settimeout(DIAL_TIMEOUT)
    dial = _dial(f"unix://{daemon.socket}", theirs)
    theirs.close()
    try:
        protocol.send_msg(ours, protocol.Hello(protocol.PROTOCOL_VERSION, "dial-test"))
        welcome = _read(ours)
        assert isinstance(welcome, protocol.Welcome) and welcome.uid == os.getuid(), welcome
        protocol.send_msg(ours, protocol.Submit(protocol.ApiInfo()))
        info = _read(ours)
        assert isinstance(info, protocol.Result) and info.value["pid"] == daemon.proc.pid, info
        # A big request crosses in pieces, and a big answer comes back whole and in order:
        # a launch whose job prints the 300 kB it was sent, followed in this one stream.
        marker = "".join(f"{i:06d}" for i in range(50_000))
        protocol.send_msg(ours, protocol.Submit(protocol.Launch(
            task=Task(run=f"printf %s {marker}"), cluster="dial"), follow_job=True))
        out, msg = bytearray(), _read(ours)
        while not isinstance(msg, (protocol.Result, protocol.Error)):
            if isinstance(msg, protocol.Chunk):
                out += msg.data
            msg = _read(ours)
        assert isinstance(msg, protocol.Result) and msg.status is protocol.Status.SUCCEEDED, msg
        assert marker in out.decode(), len(out)
        # The client's EOF is a half-close: the daemon still answers what it was asked.
        protocol.send_msg(ours, protocol.Submit(protocol.ApiStatus(request_ids=[msg.request_id])))
        ours.shutdown(socket.SHUT_WR)
        listing = _read(ours)
        assert isinstance(listing, protocol.Result), listing
        [row] = listing.value
        assert row["id"] == msg.request_id and row["cluster"] == "dial", row
        assert ours.recv(1) == b""                  # then the daemon hangs up, and so does dial
        assert dial.wait(DIAL_TIMEOUT) == 0, dial.stderr.read() if dial.stderr else ""
    finally:
        ours.close()
        if dial.poll() is None:
            dial.kill()
            dial.wait()


def test_no_socket_is_exit_4_with_the_reason(workdir):
    dial = _dial(f"unix://{workdir / 'nothing.sock'}")
    _, err = dial.communicate(timeout=DIAL_TIMEOUT)
    assert dial.returncode == 4 and "no skyd socket" in err, (dial.returncode, err)


def test_a_socket_nobody_answers_is_exit_75_restarting(workdir):
    path = workdir / "dead.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))             # bound, never listening: the connect is refused
    try:
        dial = _dial(f"unix://{path}")
        _, err = dial.communicate(timeout=DIAL_TIMEOUT)
    finally:
        dead.close()
    assert dial.returncode == 75 and "not answering" in err, (dial.returncode, err)


def test_a_socket_the_caller_may_not_open_is_exit_5(workdir, people):
    alice = people[0]
    path = workdir / "closed.sock"
    closed = socket.socket(socket.AF_UNIX)
    closed.bind(str(path))
    closed.listen()
    os.chmod(path, 0o600)
    os.chmod(workdir, 0o755)
    try:
        p = alice.skyctl(SimpleNamespace(host=f"unix://{path}"), "dial-stdio",
                         timeout=DIAL_TIMEOUT, stdin=subprocess.DEVNULL)
    finally:
        closed.close()
    assert p.returncode == 5 and "permission denied" in p.stderr, (p.returncode, p.stderr)


def test_tcp_is_refused_it_bridges_only_a_unix_socket():
    dial = _dial("tcp://127.0.0.1:1")
    _, err = dial.communicate(timeout=DIAL_TIMEOUT)
    assert dial.returncode == 4 and "bridges to a Unix socket" in err, (dial.returncode, err)
