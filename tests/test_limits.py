"""Fair shares and limits: one user cannot deny service to the others. Connections per uid,
the handshake timeout, bytes of unfinished frames in flight, the long queue's round robin
and per-user caps, time limits on long requests, and the request log cap. A real root
daemon; alice and bob are real accounts (tests/users.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import msgspec

from conftest import processes_mentioning, wait_until, write_task
from skyd import protocol
from skyd.taskspec import Task

MiB = 1024 * 1024
_dec = msgspec.msgpack.Decoder(protocol.ServerMsg)


def _team(make_daemon, workdir: Path, *flags: str):
    """A root daemon whose socket alice and bob can reach (the `team` fixture, with flags)."""
    import users
    os.chmod(workdir, 0o755)
    return make_daemon("--socket-group", users.GROUP, *flags)


def _submit(person, d, *args: str) -> str:
    p = person.skyctl(d, "launch", "--async", *args)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


def _slow(workdir: Path) -> str:
    """A task whose setup holds its long slot (the request ends when its job starts)."""
    return str(write_task(workdir, "slow-setup.yaml", "setup: sleep 60\n"))


def _cancel_all(d) -> None:
    """Leave nothing running for the fixture's shutdown."""
    d.call(protocol.ApiCancel(all=True, all_users=True))
    assert wait_until(lambda: not d.call(protocol.ApiInfo()).long_running, 15)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _hello_socket(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    protocol.send_msg(s, protocol.Hello(protocol.PROTOCOL_VERSION, "test"))
    assert isinstance(_dec.decode(protocol.recv_frame(s)), protocol.Welcome)
    return s


# A person's process that holds N handshaken connections open until its stdin closes.
HOLD = """
import socket, sys
hello = bytes.fromhex(sys.argv[3])
socks = []
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1])
    s.sendall(hello)
    s.recv(4096)
    socks.append(s)
print("holding", flush=True)
sys.stdin.read()
"""


def test_connections_per_user_are_capped(make_daemon, workdir, people):
    alice, bob = people
    d = _team(make_daemon, workdir, "--connections-per-user", "5")
    hello = protocol.encode_frame(protocol.Hello(protocol.PROTOCOL_VERSION, "flood")).hex()
    holder = subprocess.Popen([alice.python, "-c", HOLD, str(d.socket), "5", hello],
                              preexec_fn=alice._become, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        p = alice.skyctl(d, "api", "info")
        assert p.returncode != 0
        assert "too many connections for you: 5 open" in p.stderr, p.stderr
        # Someone else is not locked out.
        p = bob.skyctl(d, "api", "info")
        assert p.returncode == 0, p.stderr
        assert "skyd-bob" in p.stdout
    finally:
        holder.stdin.close()
        holder.wait(10)
    # Her connections closed, she is back.
    assert wait_until(lambda: alice.skyctl(d, "api", "info").returncode == 0, 10)


def test_silent_connection_is_closed_after_the_handshake_timeout(make_daemon):
    d = make_daemon("--handshake-timeout", "0.5")
    start = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(d.socket))
        msg = _dec.decode(protocol.recv_frame(s))
        assert isinstance(msg, protocol.Error) and "no hello within 0.5 s" in msg.message
        assert s.recv(1) == b""          # closed
    assert time.monotonic() - start < 5
    # A frame larger than a hello is refused before the handshake.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(d.socket))
        s.sendall(protocol.HEADER.pack(1 * MiB))
        msg = _dec.decode(protocol.recv_frame(s))
        assert msg.code is protocol.ErrorCode.TOO_LARGE and "before the handshake" in msg.message
    assert d.call(protocol.ApiInfo()).limits.handshake_timeout == 0.5


def test_half_sent_frames_are_bounded_by_the_in_flight_budget(make_daemon):
    cap = 32 * MiB
    d = make_daemon("--inflight-bytes", str(cap))
    d.call(protocol.ApiInfo())
    before = _rss(d.proc.pid)
    socks, refused = [], 0
    try:
        for _ in range(40):
            s = _hello_socket(d.socket)
            socks.append(s)
            try:
                s.sendall(protocol.HEADER.pack(15 * MiB) + b"\0" * (8 * MiB))
            except (BrokenPipeError, ConnectionResetError):
                pass
        time.sleep(0.5)
        grown = _rss(d.proc.pid) - before
        for s in socks:
            s.settimeout(0.2)
            try:
                msg = _dec.decode(protocol.recv_frame(s))
            except (OSError, ConnectionError):
                continue
            if isinstance(msg, protocol.Error):
                assert msg.code is protocol.ErrorCode.BUSY and "in flight" in msg.message
                refused += 1
        assert grown < cap + 16 * MiB, f"daemon grew by {grown / MiB:.0f} MiB"
        assert refused >= 30
        assert d.call(protocol.ApiInfo()).version      # still answers
    finally:
        for s in socks:
            s.close()
    # The budget comes back when those connections go: a whole large frame is read again.
    def whole_frame_read() -> bool:
        with _hello_socket(d.socket) as s:
            s.sendall(protocol.HEADER.pack(15 * MiB) + b"\xc1" * (15 * MiB))
            msg = _dec.decode(protocol.recv_frame(s))
            return msg.code is protocol.ErrorCode.BAD_REQUEST
    assert wait_until(whole_frame_read, 10, 0.2)


def test_long_queue_is_round_robin_across_users(make_daemon, workdir, people):
    alice, bob = people
    d = _team(make_daemon, workdir, "--long-slots", "1")
    first = _submit(alice, d, "-c", "a0", _slow(workdir))
    assert wait_until(lambda: d.request(first).status is protocol.Status.RUNNING)
    queued = [_submit(alice, d, "-c", f"a{i}", "true") for i in (1, 2, 3)]
    bobs = _submit(bob, d, "-c", "b0", "true")
    assert alice.skyctl(d, "api", "cancel", first).returncode == 0
    recs = [d.wait_request(r) for r in (*queued, bobs)]
    assert all(r.status is protocol.Status.SUCCEEDED for r in recs), recs
    order = [r.cluster for r in sorted(recs, key=lambda r: r.started_at)]
    assert order == ["b0", "a1", "a2", "a3"]     # bob's turn comes next, not last


def test_pending_long_requests_per_user_are_capped(make_daemon, workdir, people):
    alice, bob = people
    d = _team(make_daemon, workdir, "--long-slots", "1", "--user-pending", "2")
    running = _submit(alice, d, "-c", "p0", _slow(workdir))
    assert wait_until(lambda: d.request(running).status is protocol.Status.RUNNING)
    _submit(alice, d, "-c", "p1", "true")
    _submit(alice, d, "-c", "p2", "true")
    p = alice.skyctl(d, "launch", "--async", "-c", "p3", "true")
    assert p.returncode != 0
    assert "queue full for you: 2 of your long requests are waiting (limit 2" in p.stderr
    mine = [r for r in d.call(protocol.ApiStatus(all_users=True, all_statuses=True))
            if r.uid == alice.uid]
    assert sorted(r.cluster for r in mine) == ["p0", "p1", "p2"]     # nothing queued
    assert "p3" not in {c.name for c in d.call(protocol.ClusterStatus(all_users=True))}
    _submit(bob, d, "-c", "q0", "true")        # bob's share is his own
    info = d.call(protocol.ApiInfo())
    assert info.limits.user_pending == 2
    _cancel_all(d)


def test_long_slots_per_user_are_capped(make_daemon, workdir, people):
    alice, bob = people
    d = _team(make_daemon, workdir, "--long-slots", "3", "--user-long-slots", "1")
    slow = _slow(workdir)
    a0 = _submit(alice, d, "-c", "r0", slow)
    a1 = _submit(alice, d, "-c", "r1", slow)
    b0 = _submit(bob, d, "-c", "r2", slow)
    running = protocol.Status.RUNNING
    assert wait_until(lambda: d.request(a0).status is running and d.request(b0).status is running)
    time.sleep(0.3)
    assert d.request(a1).status is protocol.Status.PENDING      # a slot is free, not hers
    info = d.call(protocol.ApiInfo())
    assert (info.long_running, info.long_pending, info.limits.user_long_slots) == (2, 1, 1)
    assert alice.skyctl(d, "api", "cancel", a0).returncode == 0
    assert wait_until(lambda: d.request(a1).status is running)
    _cancel_all(d)


def test_long_request_is_killed_at_its_time_limit(make_daemon, workdir):
    d = make_daemon("--long-timeout", "1")
    assert d.call(protocol.ApiInfo()).limits.long_timeout == 1
    slow = write_task(workdir, "slow.yaml", "setup: sleep 31.4159\nrun: echo never\n")
    start = time.monotonic()
    p = d.skyctl("launch", "-c", "t0", str(slow))          # the daemon's default limit
    assert p.returncode == 1
    assert "time limit of 1 s exceeded" in p.stderr, p.stderr
    assert time.monotonic() - start < 15
    rec = next(r for r in d.call(protocol.ApiStatus(all_statuses=True)) if r.cluster == "t0")
    assert rec.status is protocol.Status.FAILED and rec.error == "time limit of 1 s exceeded"
    assert [j.status for j in d.call(protocol.JobQueue(cluster="t0"))] == ["FAILED"]
    assert wait_until(lambda: not processes_mentioning(Path("31.4159")), 10)
    # A request's own limit replaces the default.
    ok = write_task(workdir, "ok.yaml", "setup: sleep 1.5\nrun: echo fine\n")
    p = d.skyctl("launch", "-c", "t1", "--timeout", "20", str(ok))
    assert p.returncode == 0, p.stderr
    p = d.skyctl("exec", "-c", "t1", "--timeout", "5", str(slow))     # exec: no setup
    assert p.returncode == 0, p.stderr
    p = d.skyctl("launch", "-c", "t2", "--timeout", "-1", "true")
    assert p.returncode == 2 and "timeout" in p.stderr


def test_request_log_is_capped_with_a_marker(make_daemon, workdir):
    cap = 10000
    d = make_daemon("--request-log-bytes", str(cap))
    task = write_task(workdir, "loud.yaml", "setup: yes 0123456789 | head -n 50000\n")
    rid = d.submit_async(protocol.Launch(task=Task(setup="yes 0123456789 | head -n 50000"),
                                         cluster="l0"))
    assert d.wait_request(rid).status is protocol.Status.SUCCEEDED
    data = (d.state_dir / "logs" / "requests" / f"{rid}.log").read_bytes()
    assert len(data) < cap + 1000
    marker = f"[skyd] output truncated: log limit of {cap} bytes reached\n".encode()
    assert data.count(marker) == 1
    head, tail = data.split(marker)
    assert b"0123456789\n" in head
    assert all(line.startswith(b"[skyd] ") for line in tail.splitlines())
    p = d.skyctl("launch", "-c", "l1", str(task))       # a follower sees the same
    assert p.returncode == 0 and "output truncated" in p.stderr      # skyd's line: on stderr
    assert d.call(protocol.ApiInfo()).limits.request_log_bytes == cap


def test_managed_jobs_are_not_bound_by_their_owners_pending_cap(make_daemon, workdir, people):
    """The controller submits launches and teardowns on alice's behalf: they take her
    share of slots, but her cap on waiting requests binds only what she submits herself."""
    alice, _ = people
    d = _team(make_daemon, workdir, "--long-slots", "4", "--user-pending", "1",
              "--jobs-parallelism", "3")
    for i in range(6):
        p = alice.skyctl(d, "jobs", "launch", "--async", "-n", f"m{i}", "echo managed")
        assert p.returncode == 0, p.stderr
    peak_running = 0

    def all_done() -> bool:
        nonlocal peak_running
        peak_running = max(peak_running, d.call(protocol.ApiInfo()).long_running)
        js = d.call(protocol.JobsQueue(all_users=True))
        return len(js) == 6 and all(j.status == "SUCCEEDED" and not j.teardown_pending
                                    for j in js)
    assert wait_until(all_done, 90, 0.1), d.call(protocol.JobsQueue(all_users=True))
    assert peak_running <= 2          # her share: half of the 4 long slots
