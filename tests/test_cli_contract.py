"""The output contract, command by command, through the real skyctl against a real daemon:
stdout holds only the command's product (what the task printed, the listing, or with
--json one JSON document), and every line skyd or skyctl adds goes to stderr."""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

from conftest import Daemon, kill_leftovers
from skyctl import commands
from skyd import protocol

SETUP_OUT, TASK_OUT = "setup-out\n", "task-out\n"
# What skyd and skyctl say (stderr's), never on stdout.
SKYD_LINE = re.compile(r"\[skyd\] |Request \S+ accepted|error:|Job \d+ (on|submitted)|"
                       r"[Mm]anaged job \d+|Cancel|Cluster \S+ is|No |.*already|Detached")


@pytest.fixture(scope="module")
def d():
    """One daemon for the module: cluster `c` whose launch printed SETUP_OUT then ran a job
    printing TASK_OUT, and managed job 1, done."""
    tmp = Path(tempfile.mkdtemp(prefix="skyd-c-", dir="/tmp"))
    daemon = Daemon(tmp / "state", ["--skip-resources-check", "--drain-timeout", "2"]).start()
    try:
        daemon.task = tmp / "t.yaml"
        daemon.task.write_text("setup: echo setup-out\nrun: echo task-out\n")
        daemon.skyctl("launch", "-c", "c", str(daemon.task), check=True)
        daemon.skyctl("jobs", "launch", "echo task-out", check=True)
        yield daemon
    finally:
        daemon.stop(signal.SIGTERM)
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _request_of(d, cluster: str) -> str:
    return next(r.id for r in d.call(protocol.ApiStatus(all_statuses=True, limit=1000))
                if r.cluster == cluster and r.name == "launch")


def _fresh(d, name: str, *extra: str) -> str:
    d.skyctl("launch", "-c", name, *extra, "-d", "true", check=True)
    return name


# (command, args for the suffix `s` of this run, stdout without --json: exact text, or None
# for a listing). Setups make what the command acts on, per run.
ROWS = [
    ("launch", lambda d, s: ["launch", "-c", f"l{s}", str(d.task)], SETUP_OUT + TASK_OUT),
    ("exec", lambda d, s: ["exec", "c", str(d.task)], TASK_OUT),
    ("status", lambda d, s: ["status"], None),
    ("stop", lambda d, s: ["stop", _fresh(d, f"st{s}")], ""),
    ("start", lambda d, s: ["start", f"st{s}"], ""),
    ("down", lambda d, s: ["down", "-y", f"st{s}"], ""),
    ("autostop", lambda d, s: ["autostop", "c", "-i", "30"], ""),
    ("queue", lambda d, s: ["queue", "c"], None),
    ("logs", lambda d, s: ["logs", "c", "1"], TASK_OUT),
    ("cancel", lambda d, s: ["cancel", "c", "1"], ""),
    ("jobs launch", lambda d, s: ["jobs", "launch", str(d.task)], TASK_OUT),   # setup: controller log
    ("jobs queue", lambda d, s: ["jobs", "queue", "-a"], None),
    ("jobs logs", lambda d, s: ["jobs", "logs", "1"], TASK_OUT),
    ("jobs cancel", lambda d, s: ["jobs", "cancel", "1"], ""),
    ("check", lambda d, s: ["check"], ""),
    ("gpus", lambda d, s: ["gpus"], None),
    ("api status", lambda d, s: ["api", "status", "-a"], None),
    ("api logs", lambda d, s: ["api", "logs", _request_of(d, "c")], SETUP_OUT),
    ("api cancel", lambda d, s: ["api", "cancel", _request_of(d, "c")], ""),
    ("api info", lambda d, s: ["api", "info"], None),
]


def test_every_command_is_covered():
    every = set()
    for row in commands.TABLE:
        if row.name != "shell":
            every |= {f"{row.name} {sub}" for sub in row.subcommands} or {row.name}
    every.discard("api watch")      # a stream until Ctrl-C: tests/test_watch.py
    every.discard("dial-stdio")     # a byte bridge for ssh://, no output: tests/test_remote_client.py
    assert {name for name, _, _ in ROWS} == every


@pytest.mark.parametrize("name, make, expected", ROWS, ids=[r[0] for r in ROWS])
def test_stdout_is_the_product_and_stderr_the_rest(d, name, make, expected):
    p = d.skyctl(*make(d, "p"))
    assert p.returncode == 0, (p.stdout, p.stderr)
    if expected is not None:
        assert p.stdout == expected, p.stderr
    else:
        assert p.stdout.strip(), p.stderr            # a listing
    for line in p.stdout.splitlines():
        assert not SKYD_LINE.match(line), line
    if name in ("launch", "exec", "jobs launch", "stop", "start", "down", "api logs"):
        assert "[skyd] " in p.stderr or "managed job" in p.stderr, p.stderr


@pytest.mark.parametrize("name, make, expected", ROWS, ids=[r[0] for r in ROWS])
def test_json_is_one_document_on_stdout(d, name, make, expected):
    p = d.skyctl(*make(d, "j"), "--json")
    assert p.returncode == 0, (p.stdout, p.stderr)
    doc = json.loads(p.stdout)                       # the whole of stdout
    statuses = []

    def walk(v):
        if isinstance(v, dict):
            statuses.extend(x for k, x in v.items() if k == "status" and isinstance(x, str))
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    walk(doc)
    assert all(s == s.upper() for s in statuses), statuses
    if expected:                                     # the task's output: on stderr now
        assert all(line in p.stderr for line in expected.splitlines()), p.stderr
