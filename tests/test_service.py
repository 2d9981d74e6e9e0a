"""Running as a service: socket activation, sd_notify, the resource check, `skyd capacity`,
configuration precedence."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from conftest import ROOT, Daemon, wait_until
from skyd import protocol
from skyd.server import config


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def test_socket_activation_and_sd_notify(workdir):
    sock_path = workdir / "act.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(16)
    notify_path = workdir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(20)
    fd = listener.fileno()
    state = workdir / "st"
    # As systemd does: the listening socket is fd 3, LISTEN_PID is the daemon's own pid.
    launcher = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.executable, [sys.executable, '-m', 'skyd', 'serve', "
                "'--state-dir', sys.argv[2], '--skip-resources-check'])")
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, str(fd), str(state)],
        env=_env(NOTIFY_SOCKET=str(notify_path)), pass_fds=(fd,),
        stdout=subprocess.DEVNULL, stderr=open(workdir / "daemon.log", "wb"))
    try:
        try:
            messages = notify.recv(4096).decode()
        except TimeoutError:
            raise AssertionError((workdir / "daemon.log").read_text()) from None
        assert "READY=1" in messages
        d = Daemon(state)
        d.socket = sock_path          # the adopted socket, not one it bound itself
        info = d.call(protocol.ApiInfo())
        assert info.version
        assert not (state / "skyd.sock").exists()
        proc.terminate()
        assert "STOPPING=1" in notify.recv(4096).decode()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        listener.close()
        notify.close()


def test_refuses_to_start_below_minimum_unless_told(workdir):
    cmd = [sys.executable, "-m", "skyd", "serve", "--state-dir", str(workdir / "s")]
    p = subprocess.run(cmd, env=_env(SKYD_CPUS="1", SKYD_MEMORY="1G"), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 1
    assert "not enough resources for team use" in p.stderr
    assert "short by 1" in p.stderr and "--skip-resources-check" in p.stderr
    d = Daemon(workdir / "s2", ["--skip-resources-check"])
    d.proc = subprocess.Popen([*cmd[:-1], str(d.state_dir), "--skip-resources-check"],
                              env=_env(SKYD_CPUS="1", SKYD_MEMORY="1G"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    d._log = open(os.devnull, "wb")
    try:
        d.wait_ready()
        info = d.call(protocol.ApiInfo())
        assert info.long_slots >= 1 and info.short_slots >= 8
        assert "env SKYD_CPUS" in info.slots_source
    finally:
        d.stop()


def test_capacity_table_for_any_machine():
    p = subprocess.run([sys.executable, "-m", "skyd", "capacity", "--cpus", "4", "--memory", "8G",
                        "--json"], capture_output=True, text=True, env=_env(), check=True)
    rows = json.loads(p.stdout)["rows"]
    assert rows[0]["long"] >= 64 and rows[0]["short"] >= 1000
    p = subprocess.run([sys.executable, "-m", "skyd", "capacity"], capture_output=True,
                       text=True, env=_env(), check=True)
    assert "256" in p.stdout and "SKYPILOT" in p.stdout.upper()


def test_config_precedence(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("long_slots: 3\nshort_slots: 7\nretention_hours: 5\n")
    c = config.load({"state_dir": str(tmp_path)}, env={"SKYD_SHORT_SLOTS": "9"})
    assert (c.long_slots, c.short_slots, c.retention_hours) == (3, 9, 5.0)
    c = config.load({"state_dir": str(tmp_path), "short_slots": 11}, env={"SKYD_SHORT_SLOTS": "9"})
    assert c.short_slots == 11
    cfg.write_text("bogus: 1\n")
    try:
        config.load({"state_dir": str(tmp_path)}, env={})
    except config.ConfigError as e:
        assert "bogus" in str(e)
    else:
        raise AssertionError("unknown setting accepted")


def test_a_daemon_takes_its_settings_from_config_file(make_daemon, workdir, monkeypatch):
    """`skyd serve --config FILE`: the file's settings (in place of <state-dir>/config.yaml),
    under the environment, under the flags."""
    cfg = workdir / "team.yaml"
    cfg.write_text("long_slots: 3\nshort_slots: 7\nuser_pending: 17\nlong_timeout: 42\n")
    (workdir / "state").mkdir()
    (workdir / "state" / "config.yaml").write_text("long_slots: 9\nlong_timeout: 99\n")
    monkeypatch.setenv("SKYD_USER_PENDING", "19")
    d = make_daemon("--config", str(cfg), "--short-slots", "5")
    info = d.call(protocol.ApiInfo())
    assert (info.long_slots, info.short_slots) == (3, 5)          # file; the flag wins
    assert (info.limits.user_pending, info.limits.long_timeout) == (19, 42.0)   # env wins
    # A broken file is refused at start, naming it.
    bad = workdir / "bad.yaml"
    bad.write_text("long_slots: [\n")
    p = subprocess.run([sys.executable, "-m", "skyd", "serve", "--config", str(bad),
                        "--state-dir", str(workdir / "other")], capture_output=True,
                       text=True, env=_env(), timeout=30)
    assert p.returncode == 2 and f"config file {bad} is not valid YAML" in p.stderr


def test_second_daemon_on_the_same_socket_is_refused(daemon):
    p = subprocess.run([sys.executable, "-m", "skyd", "serve", "--state-dir",
                        str(daemon.state_dir.parent / "other"), "--socket", str(daemon.socket),
                        "--skip-resources-check"], capture_output=True, text=True, env=_env(),
                       timeout=30)
    assert p.returncode == 1
    assert "already listening" in p.stderr
    assert wait_until(lambda: daemon.call(protocol.ApiInfo()) is not None)
