"""Running as a service: SIGHUP reads the config again and applies limits, admins and
tokens without dropping what runs; log lines carry the journal's priorities when stderr is
the journal (JOURNAL_STREAM), and stay plain and dated elsewhere."""

from __future__ import annotations

import os
import re
import signal
import threading

from conftest import wait_until
from skyd import protocol
from skyd.taskspec import Task
from tcpclient import connect, new_token


def _hup(d, marker: str) -> None:
    before = d.log().count(marker)
    d.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: d.log().count(marker) > before, 10), d.log()


def test_sighup_applies_limits_and_admins_without_dropping_requests(make_daemon, workdir,
                                                                     people):
    import users
    alice, bob = people
    os.chmod(workdir, 0o755)
    cfg = workdir / "skyd.yaml"
    base = f"socket_group: {users.GROUP}\ntcp: 127.0.0.1:0\n"
    cfg.write_text(base + "user_pending: 100\n")
    d = make_daemon("--config", str(cfg))
    long_slots = d.call(protocol.ApiInfo()).long_slots
    # A request in flight, followed over one open connection through the reload.
    frames: list = []
    follower = threading.Thread(target=lambda: frames.extend(d.frames(protocol.Launch(
        task=Task(setup="sleep 3", run="true"), cluster="busy"), wait=True)))
    follower.start()
    assert wait_until(lambda: d.call(protocol.ApiInfo()).long_running == 1, 20)
    ci = new_token(d, "ci", "--user", bob.name)
    with connect(d, ci) as c:
        assert c.welcome is not None and not c.welcome.admin

    cfg.write_text(base + f"user_pending: 7\nconnections_per_user: 5\nhandshake_timeout: 4\n"
                          f"admin_group: {bob.name}\nlong_slots: {long_slots + 3}\n")
    _hup(d, "reload: configuration read again")
    info = d.call(protocol.ApiInfo())
    assert (info.limits.user_pending, info.limits.connections_per_user,
            info.limits.handshake_timeout) == (7, 5, 4.0)
    assert info.long_slots == long_slots                 # slots change at a restart, and say so
    assert "reload: long_slots changed: applied at the next restart" in d.log()
    with connect(d, ci) as c:                            # bob is an admin now
        assert c.welcome is not None and c.welcome.admin
    follower.join(30)
    assert isinstance(frames[-1], protocol.Result) and frames[-1].status is protocol.Status.SUCCEEDED

    # A file that does not load changes nothing, and the daemon carries on.
    cfg.write_text("user_pending: [\n")
    _hup(d, "reload: configuration not applied")
    assert d.call(protocol.ApiInfo()).limits.user_pending == 7
    cfg.write_text(base + "admin_group: no-such-group-here\n")
    _hup(d, "reload: configuration not applied")
    assert d.call(protocol.ApiInfo()).limits.user_pending == 7
    d.call(protocol.Down(cluster="busy"))


def test_log_lines_carry_journal_priorities(make_daemon, workdir, monkeypatch):
    cfg = workdir / "skyd.yaml"
    cfg.write_text("retention_hours: 24\n")
    d = make_daemon("--config", str(cfg), start=False, name="journal")
    d.log_path.touch()
    st = d.log_path.stat()      # as systemd says it: stderr is this device and inode
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    d.start()
    cfg.write_text("retention_hours: 24\nspares: 5\n")
    _hup(d, "spares changed")
    lines = d.log().splitlines()
    assert any(re.match(r"<6>skyd: skyd \S+ listening on ", line) for line in lines), lines
    assert "<4>skyd.server.reload: reload: spares changed: applied at the next restart" in lines
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines   # no line read as info

    monkeypatch.delenv("JOURNAL_STREAM")
    plain = make_daemon(name="plain")
    first = plain.log().splitlines()[0]     # a time, the level, the logger (skyd or its part)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ INFO skyd(\.[a-z_.]+)?: ", first), first
