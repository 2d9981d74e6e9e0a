"""TCP beside the Unix socket: a bearer token on every connection, even on loopback; TLS
with a certificate made here; a bind off loopback without TLS refused at start; the
limits before authentication. A real daemon, the real skyctl over tcp://, real accounts
(tests/users.py) for the users tokens act as."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import msgspec
import pytest

from conftest import ROOT, wait_until
from skyctl.connection import ServerError, Unreachable
from skyd import protocol
from skyd.protocol import ErrorCode
from skyd.server.remote import BAD_TOKEN_DELAY
from skyd.taskspec import Task
from tcpclient import connect, new_token, raw_tcp, self_signed, skyd_token, tcp_port, timed_refusal

_dec = msgspec.msgpack.Decoder(protocol.ServerMsg)


def _serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "skyd", "serve", "--skip-resources-check", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)


def _denied(e: Exception, words: str) -> None:
    assert isinstance(e, ServerError), repr(e)
    assert e.error.code is ErrorCode.PERMISSION_DENIED, e.error
    assert words in e.error.message, e.error.message


def test_tcp_needs_a_valid_token_even_on_loopback(make_daemon, people):
    d = make_daemon("--tcp", "127.0.0.1:0")
    alice = people[0]
    good = new_token(d, "alice-laptop", "--user", alice.name)
    wrong = "skyd_" + "x" * 43
    # No token (skyctl would not even try: a hello as an older client sends it), a wrong one.
    with raw_tcp(tcp_port(d)) as s:
        t0 = time.monotonic()
        protocol.send_msg(s, protocol.Hello(protocol.PROTOCOL_VERSION, "old-client"))
        err = _first_frame(s)
        took = time.monotonic() - t0
    assert isinstance(err, protocol.Error) and err.code is ErrorCode.PERMISSION_DENIED
    assert "needs a token" in err.message
    assert BAD_TOKEN_DELAY * 0.95 <= took < BAD_TOKEN_DELAY + 2, took   # the fixed delay
    took, e = timed_refusal(d, wrong)
    _denied(e, "invalid token")
    assert BAD_TOKEN_DELAY * 0.95 <= took < BAD_TOKEN_DELAY + 2, took
    c = connect(d, good)
    assert c.welcome is not None and (c.welcome.user, c.welcome.uid) == (alice.name, alice.uid)
    assert c.welcome.admin is False

    # Expired: an open session is closed when it expires, saying why; a new one is refused
    # with its name and date. Revoked: as unknown, from the next connection.
    short = new_token(d, "short", "--user", alice.name, "--expires", "3s")
    opened = connect(d, short)
    assert opened.call(protocol.ApiInfo()).pid == d.proc.pid
    got = opened.read()                 # nothing asked: what comes is the close
    assert isinstance(got, protocol.Error) and "has expired" in got.message, got
    opened.close()
    _denied(timed_refusal(d, short)[1], "token 'short' expired on")
    p = skyd_token(d, "revoke", "alice-laptop")
    assert p.returncode == 0 and "revoked" in p.stdout, p.stderr
    _denied(timed_refusal(d, good)[1], "invalid token")
    got = c.read()                      # an open session is closed, saying why
    assert isinstance(got, protocol.Error) and "has been revoked" in got.message, got
    c.close()
    # Nothing of what was sent is logged; each refusal is, with its address.
    log = d.log()
    assert good not in log and wrong not in log and short not in log
    assert log.count("refused a login from 127.0.0.1") == 4


def test_a_service_token_runs_work_as_its_user(make_daemon, workdir, people):
    """A CI system's token acts as a service account: its work runs as that user, as over
    the socket; it sees its own requests only."""
    os.chmod(workdir, 0o755)          # the account's jobs reach their cluster directory
    alice, bob = people
    d = make_daemon("--tcp", "127.0.0.1:0")
    ci = new_token(d, "ci", "--user", bob.name)
    with connect(d, ci) as c:
        frames = list(c.submit(protocol.Launch(task=Task(run="id -un; id -u"), cluster="ci-c"),
                               wait=True))
        result = frames[-1]
        assert isinstance(result, protocol.Result) and result.error is None, frames
        job = d.wait_job("ci-c", 1, timeout=60)
        assert job.status is protocol.JobStatus.SUCCEEDED and job.user == bob.name
        out = b"".join(f.data for f in c.submit(protocol.JobLogs(cluster="ci-c", follow=False))
                       if isinstance(f, protocol.Chunk)).decode()
        assert f"{bob.name}\n{bob.uid}\n" in out, out
        theirs = c.call(protocol.ApiStatus(all_statuses=True))
        assert theirs and {r.uid for r in theirs} == {bob.uid}
        with pytest.raises(ServerError) as e:       # -u is for admins
            c.call(protocol.ApiStatus(all_users=True))
        assert e.value.error.code is ErrorCode.PERMISSION_DENIED
    d.call(protocol.Down(cluster="ci-c"))


def test_tls_with_a_self_signed_certificate(make_daemon, workdir):
    cert, key = self_signed(workdir)
    # Off loopback is fine with TLS: every interface, reached here on 127.0.0.1.
    d = make_daemon("--tcp", "0.0.0.0:0", "--tls-cert", str(cert), "--tls-key", str(key))
    info = d.call(protocol.ApiInfo())
    assert info.tls and info.tcp.startswith("0.0.0.0:")
    token = new_token(d, "tls")
    with connect(d, token, ca=cert, host="localhost") as c:
        assert c.welcome is not None and c.welcome.user == "root"
        assert c.call(protocol.ApiInfo()).version == info.version
    with connect(d, token, ca=cert) as c:                        # the certificate names the IP
        assert c.welcome is not None
    with pytest.raises(Unreachable, match="failed TLS verification"):
        connect(d, token, tls=True, host="localhost")      # trusting the system's CAs only
    with pytest.raises(Unreachable):
        connect(d, token, tls=False)                       # clear text to a TLS listener
    # The certificate is renewed in place: SIGHUP loads it for new handshakes.
    (workdir / "renewed").mkdir()
    cert2, key2 = self_signed(workdir / "renewed")
    cert.write_bytes(cert2.read_bytes())
    key.write_bytes(key2.read_bytes())
    d.proc.send_signal(1)
    assert wait_until(lambda: "reload: configuration read again" in d.log(), 10)
    with connect(d, token, ca=cert2, host="localhost") as c:
        assert c.welcome is not None


def test_a_bind_off_loopback_without_tls_is_refused_at_start(workdir):
    p = _serve("--state-dir", str(workdir / "a"), "--tcp", "0.0.0.0:46590")
    assert p.returncode == 2
    assert "refusing to listen on 0.0.0.0:46590 without TLS" in p.stderr
    assert "tls_cert" in p.stderr and "ssh://" in p.stderr
    cfg = workdir / "c.yaml"
    cfg.write_text("tcp: '[::]:0'\n")                      # the config file's key, IPv6
    p = _serve("--state-dir", str(workdir / "b"), "--config", str(cfg))
    assert p.returncode == 2 and "refusing to listen on [::]:0 without TLS" in p.stderr
    cfg.write_text("tcp: 127.0.0.1:0\ntls_cert: /nonexistent.pem\n")
    p = _serve("--state-dir", str(workdir / "c"), "--config", str(cfg))
    assert p.returncode == 2 and "give both tls_cert and tls_key" in p.stderr
    p = _serve("--state-dir", str(workdir / "d"), "--tcp", "example.com:1")
    assert p.returncode == 2 and "'example.com' is not an IP address" in p.stderr
    assert not (workdir / "a").exists()              # refused before anything was touched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_frame(s: socket.socket):
    return _dec.decode(protocol.recv_frame(s))


def test_an_address_that_keeps_failing_waits(make_daemon, workdir):
    cfg = workdir / "limits.yaml"
    cfg.write_text("tcp: 127.0.0.1:0\ntcp_auth_failures: 2\n")
    d = make_daemon("--config", str(cfg))
    good = new_token(d, "good")
    for _ in range(2):
        _denied(timed_refusal(d, "skyd_wrong")[1], "invalid token")
    took, e = timed_refusal(d, good)                 # even a good token, for the minute
    assert isinstance(e, ServerError) and e.error.code is ErrorCode.BUSY, e
    assert "too many failed" in e.error.message and took < BAD_TOKEN_DELAY / 2
    assert "retry in" in e.error.hint


def test_limits_before_authentication(make_daemon, workdir):
    cfg = workdir / "limits.yaml"
    cfg.write_text("tcp: 127.0.0.1:0\ntcp_preauth_per_address: 2\ntcp_handshake_timeout: 1\n"
                   "tcp_auth_failures: 0\n")
    http = _free_port()
    d = make_daemon("--config", str(cfg), "--http", f"127.0.0.1:{http}")
    port = tcp_port(d)
    silent = [raw_tcp(port), raw_tcp(port)]           # say nothing: they hold the door
    third = raw_tcp(port)
    err = _first_frame(third)
    assert isinstance(err, protocol.Error) and err.code is ErrorCode.BUSY
    third.close()
    t0 = time.monotonic()
    for s in silent:                                  # closed at the handshake timeout
        assert s.recv(100) == b"" and time.monotonic() - t0 < 5
        s.close()
    # A first frame larger than a hello: refused unread, nothing decoded.
    with raw_tcp(port) as s:
        s.sendall(protocol.HEADER.pack(1 << 20) + b"\0" * 64)
        err = _first_frame(s)
        assert isinstance(err, protocol.Error) and err.code is ErrorCode.TOO_LARGE
    # Not a hello: no echo of it in the answer or the log.
    with raw_tcp(port) as s:
        junk = msgspec.msgpack.encode({"t": "hello", "protocol": "secret-junk-123"})
        s.sendall(protocol.HEADER.pack(len(junk)) + junk)
        err = _first_frame(s)
        assert isinstance(err, protocol.Error) and err.code is ErrorCode.BAD_REQUEST
        assert "secret-junk" not in err.message
    assert "secret-junk" not in d.log()
    # The door is free again: a good token gets in.
    with connect(d, new_token(d, "after")) as c:
        assert c.welcome is not None
        # The daemon's counts cover TCP: its connections, what the door refused.
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=10) as r:
            scraped = r.read().decode()
    for line in ('skyd_limits_hit_total{limit="tcp_preauth_per_address"} 1.0',
                 'skyd_limits_hit_total{limit="tcp_handshake_timeout"} 2.0',
                 'skyd_limits_hit_total{limit="handshake_max_frame"} 1.0',
                 'skyd_protocol_errors_total{kind="no_hello"} 1.0', "skyd_connections 1.0"):
        assert line in scraped, line


def test_tokens_are_for_admins_and_another_users_token_needs_root(make_daemon, workdir, people):
    """alice is an admin (the admin group is her own): through the daemon she makes a token
    for herself, not for bob; bob, no admin, makes none and lists none."""
    import users
    alice, bob = people
    os.chmod(workdir, 0o755)
    d = make_daemon("--socket-group", users.GROUP, "--admin-group", alice.name,
                    "--tcp", "127.0.0.1:0")
    code = """
import json, socket, sys, msgspec
from skyd import protocol as p
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
dec = msgspec.msgpack.Decoder(p.ServerMsg)
p.send_msg(s, p.Hello(p.PROTOCOL_VERSION, "test")); dec.decode(p.recv_frame(s))
for op in (p.TokenCreate(name="mine"), p.TokenCreate(name="bobs", user="skyd-bob"), p.TokenList()):
    p.send_msg(s, p.Submit(op))
    r = dec.decode(p.recv_frame(s))
    print(json.dumps(msgspec.to_builtins(r if isinstance(r, p.Error) else r.value)))
"""
    def run(person):
        p = person.python_call(code.replace("sys.argv[1]", repr(str(d.socket))))
        assert p.returncode == 0, p.stderr
        return [json.loads(line) for line in p.stdout.splitlines()]
    mine, bobs, listing = run(alice)
    assert mine["user"] == alice.name and mine["token"].startswith("skyd_")
    assert bobs["code"] == "permission_denied" and "only root" in bobs["message"]
    assert [t["name"] for t in listing] == ["mine"] and "token" not in listing[0]
    for answer in run(bob):
        assert answer["code"] == "permission_denied" and "only admins" in answer["message"]
    with connect(d, mine["token"]) as c:
        assert c.welcome is not None and (c.welcome.user, c.welcome.admin) == (alice.name, True)
    p = skyd_token(d, "list", "--json")
    assert [(t["name"], t["created_by"]) for t in json.loads(p.stdout)] == [("mine", alice.name)]


def test_skyd_token_without_a_daemon_and_its_file(workdir):
    """Root manages the token file directly when no daemon runs (an install); the file
    holds hashes only, 0600; a daemon started later accepts the token."""
    from conftest import Daemon
    d = Daemon(workdir / "s", ["--skip-resources-check", "--tcp", "127.0.0.1:0"])
    token = new_token(d, "first", "--admin", "--expires", "never")
    tokens = d.state_dir / "tokens.json"
    assert oct(tokens.stat().st_mode & 0o777) == "0o600"
    assert token not in tokens.read_text() and "first" in tokens.read_text()
    assert skyd_token(d, "create", "first").returncode == 1            # names are unique
    bad = skyd_token(d, "create", "bad name!")
    assert bad.returncode == 2 and "token name 'bad name!'" in bad.stderr
    bad = skyd_token(d, "create", "x", "--expires", "soon")
    assert bad.returncode == 2 and "30d" in bad.stderr
    bad = skyd_token(d, "create", "x", "--user", "no-such-user-here")
    assert bad.returncode == 1 and "no user 'no-such-user-here'" in bad.stderr
    d.start()
    try:
        with connect(d, token) as c:
            assert c.welcome is not None and c.welcome.admin
            made = c.call(protocol.TokenCreate(name="over-tcp"))     # an admin token may
            assert made.token and made.user == "root"
        listing = skyd_token(d, "list")
        assert "first" in listing.stdout and "over-tcp" in listing.stdout
        assert token not in listing.stdout and made.token not in listing.stdout
    finally:
        d.stop()
