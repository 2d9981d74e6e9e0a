"""skyctl stays thin, finds its server, and answers with meaningful exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from skyctl import endpoint

HEAVY = {"asyncio", "aiosqlite", "aiohttp", "uvloop", "psutil", "yaml", "sqlite3",
         "prompt_toolkit", "multiprocessing", "skyd.requests.scheduler", "skyd.store", "skyd.server.daemon",
         "skyd.server.session", "skyd.requests.pool", "skyd.clusters.registry", "skyd.sizing.hardware",
         # cold start: argparse's default help formatter imports shutil (and bz2, lzma); msgspec
         # imports typing_extensions (inspect, ast, dis) when it is installed
         "shutil", "typing_extensions", "inspect", "skyctl.shell"}


def _modules_after(code: str) -> set[str]:
    """The modules `code` loads (not those the interpreter's start-up, .pth files included,
    loaded before it)."""
    # Never under CI's coverage (TESTING.md): its start-up hook imports sqlite3 and more.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
    out = subprocess.run([sys.executable, "-c", "import sys; before = set(sys.modules)\n" + code +
                          "\nimport json\nprint(json.dumps(sorted(set(sys.modules) - before)))"],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env=dict(env, PYTHONPATH=str(ROOT)))
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("code", [
    "import skyctl.cli",
    "import skyctl.cli, skyctl.commands; skyctl.commands.parse(['status'])",
    "import skyctl.cli, skyctl.commands; skyctl.commands.parse(['--host', 'unix:///x', 'queue'])",
])
def test_importing_the_client_loads_none_of_the_daemon(code):
    import importlib.util
    assert importlib.util.find_spec("typing_extensions"), "installed: the guard is tested"
    loaded = _modules_after(code)
    assert not (loaded & HEAVY), sorted(loaded & HEAVY)


def test_help_for_every_command():
    for args in (["--help"], ["launch", "--help"], ["exec", "--help"], ["api", "status", "--help"],
                 ["api", "cancel", "--help"], ["logs", "--help"], ["down", "--help"]):
        p = subprocess.run([sys.executable, "-m", "skyctl", *args], capture_output=True,
                           text=True)
        assert p.returncode == 0, (args, p.stderr)
        assert "usage: skyctl" in p.stdout


def test_usage_error_exits_2():
    p = subprocess.run([sys.executable, "-m", "skyctl", "logs"], capture_output=True, text=True)
    assert p.returncode == 2 and "CLUSTER" in p.stderr


def test_unreachable_daemon_exits_4(workdir):
    env = dict(os.environ, SKYD_HOST=f"unix://{workdir}/nothing.sock")
    p = subprocess.run([sys.executable, "-m", "skyctl", "status"], capture_output=True,
                       text=True, env=env)
    assert p.returncode == 4
    assert "no skyd socket" in p.stderr and "skyd serve" in p.stderr


def test_endpoint_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("SKYD_HOST", raising=False)
    assert endpoint.resolve(None)[0] == str(tmp_path / "state" / "skyd" / "skyd.sock")
    cfg = tmp_path / "skyctl" / "config.toml"
    cfg.parent.mkdir()
    cfg.write_text('host = "unix:///from/config.sock"\n')
    assert endpoint.resolve(None) == ("/from/config.sock", str(cfg))
    monkeypatch.setenv("SKYD_HOST", "unix:///from/env.sock")
    assert endpoint.resolve(None) == ("/from/env.sock", "SKYD_HOST")
    assert endpoint.resolve("unix:///from/flag.sock") == ("/from/flag.sock", "--host")
    with pytest.raises(endpoint.EndpointError):
        endpoint.resolve("http://example")


def test_api_info_and_json_output(daemon):
    p = daemon.skyctl("api", "info", "--json", check=True)
    info = json.loads(p.stdout)
    assert info["protocol"] == 1 and info["admin"] is True
    assert info["long_slots"] >= 1 and info["short_slots"] >= 1
    p = daemon.skyctl("api", "info", check=True)
    assert "long queue:" in p.stdout and "\033[" not in p.stdout


def test_ctrl_c_detaches_and_says_how_to_reattach(daemon, workdir):
    import signal
    import threading
    from conftest import wait_until
    from skyd import protocol
    env = dict(os.environ, SKYD_HOST=daemon.host, NO_COLOR="1")

    def interrupted(*args: str, once: str) -> str:
        """Run skyctl, Ctrl-C it once it has printed the line `once`; its stderr."""
        client = subprocess.Popen([sys.executable, "-m", "skyctl", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env)
        seen: list[str] = []
        reader = threading.Thread(target=lambda: seen.extend(client.stdout), daemon=True)
        reader.start()
        try:
            assert wait_until(lambda: once + "\n" in seen, 15), seen
            client.send_signal(signal.SIGINT)
            client.wait(10)
            reader.join(5)
            err = client.stderr.read()
        finally:
            if client.poll() is None:
                client.kill()
        assert client.returncode == 130, (seen, err)
        return err

    # In the request phase (its setup prints, then runs on): how to follow and cancel
    # the request.
    task = workdir / "slow-setup.yaml"
    task.write_text("setup: echo in-setup; sleep 30\nrun: echo never-reached\n")
    err = interrupted("launch", "-c", "cr", "--env", "A=1", str(task), once="in-setup")
    [req] = [r for r in daemon.call(protocol.ApiStatus()) if r.cluster == "cr"]
    assert req.status is protocol.Status.RUNNING          # detaching cancels nothing
    assert f"Detached; request {req.id} keeps running." in err, err
    assert f"skyctl api logs {req.id}" in err and f"skyctl api cancel {req.id}" in err, err
    daemon.call(protocol.ApiCancel(request_ids=[req.id]))

    # In the job phase (the job prints, then runs on): how to follow and cancel the job.
    err = interrupted("launch", "-c", "cc", "--env", "A=1", "echo in-job; sleep 30",
                      once="in-job")
    assert "Stopped following; the job keeps running." in err, err
    assert "skyctl logs cc 1" in err and "skyctl cancel cc 1" in err, err
    assert daemon.call(protocol.JobQueue(cluster="cc"))[0].status == "RUNNING"


def test_shell_runs_commands_with_completion(daemon):
    """The interactive shell on a real pseudo-terminal: Tab completes, commands run."""
    import pty
    import select
    import time
    daemon.skyctl("launch", "-c", "shellc", "-d", "true", check=True)
    import fcntl
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = dict(os.environ, SKYD_HOST=daemon.host, NO_COLOR="1", TERM="xterm",
               HOME=str(daemon.state_dir))
    proc = subprocess.Popen([sys.executable, "-m", "skyctl", "shell"], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen = b""

    def read_until(needle: bytes, timeout: float = 15) -> bool:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while needle not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        return needle in seen

    try:
        assert read_until(b"skyctl>"), seen[-2000:]
        os.write(master, b"queue shel")
        time.sleep(0.5)
        os.write(master, b"\t")
        assert read_until(b"queue shellc"), seen[-300:]     # Tab completed the cluster
        os.write(master, b"\r")
        assert read_until(b"Job queue of cluster shellc"), seen[-300:]
        os.write(master, b"api info\r")
        assert read_until(b"long queue:")
        os.write(master, b"exit\r")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_task_files_are_parsed_once_per_content(tmp_path, monkeypatch):
    from skyctl import taskfile
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    task = tmp_path / "t.yaml"
    task.write_text("name: a\nrun: echo one\n")
    assert taskfile.load(str(task), {}).run == "echo one"
    [cached] = (tmp_path / "cache" / "skyctl" / "tasks").iterdir()
    assert taskfile.load(str(task), {}).run == "echo one"          # from the cache
    # The entry is what is read: one for the same bytes with another parse in it wins
    # over the file (a cache that is written but never read would give "echo one").
    import msgspec
    entry = msgspec.msgpack.decode(cached.read_bytes())
    entry["doc"] = {"name": "a", "run": "echo from-the-cache"}
    cached.write_bytes(msgspec.msgpack.encode(entry))
    assert taskfile.load(str(task), {}).run == "echo from-the-cache"
    # ...and a cached file costs no yaml import (what the cache is for).
    probe = ("import sys; from skyctl import taskfile; "
             f"print(taskfile.load({str(task)!r}, {{}}).run, 'yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                        XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert out.stdout.strip() == "echo from-the-cache False"
    task.write_text("name: a\nrun: echo two\n")                     # new bytes: parsed again
    assert taskfile.load(str(task), {}).run == "echo two"
    cached.write_bytes(b"garbage")                                  # a broken entry is a miss
    task.write_text("name: a\nrun: echo one\n")
    assert taskfile.load(str(task), {}).run == "echo one"
    task.write_text("run: [unclosed\n")
    with pytest.raises(taskfile.TaskError, match="not valid YAML"):
        taskfile.load(str(task), {})
