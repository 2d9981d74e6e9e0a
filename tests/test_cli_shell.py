"""The shell is the CLI: its lines go through the same command table (a leading `skyctl`
accepted, so the hints skyctl prints can be pasted), and Tab completes commands, options,
file paths and live values, inserting at once when there is one match. Driven through
prompt_toolkit's pipe input, against a real daemon."""

from __future__ import annotations

import argparse
import contextlib

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from skyctl.shell import Shell


@pytest.fixture
def shell_of(daemon, workdir, monkeypatch):
    """A Shell against the daemon, reading keys from a pipe; the working directory holds
    task.yaml and a tasks/ directory (for path completion)."""
    monkeypatch.setenv("HOME", str(workdir))
    monkeypatch.chdir(workdir)
    (workdir / "task.yaml").write_text("run: echo from-the-file\n")
    (workdir / "tasks").mkdir()
    (workdir / "tasks" / "train.yaml").write_text("run: echo train\n")
    daemon.skyctl("launch", "-c", "shellc", "echo", "in-shellc", check=True)
    with contextlib.ExitStack() as pipes:
        def make() -> tuple[Shell, object]:
            pipe = pipes.enter_context(create_pipe_input())
            return Shell(argparse.Namespace(host=daemon.host), input=pipe,
                         output=DummyOutput()), pipe

        yield make


def typed(shell_of, keys: str) -> str:
    """The line the prompt returns after these keys (Tab is \\t, Enter \\r)."""
    shell, pipe = shell_of()
    pipe.send_text(keys)
    with create_app_session(input=pipe, output=DummyOutput()):
        return shell.session.prompt("skyctl> ")


def completions(shell_of, text: str) -> list[str]:
    shell, _ = shell_of()
    completer = shell.session.completer
    return [c.text for c in completer.get_completions(Document(text), CompleteEvent(completion_requested=True))]


# ---- one Tab, one match: inserted ---------------------------------------------------------

def test_one_tab_inserts_the_only_match(shell_of):
    assert typed(shell_of, "queue shel\t\r") == "queue shellc "
    assert typed(shell_of, "laun\t\r") == "launch "
    assert typed(shell_of, "launch --detach\t\r") == "launch --detach-run "


def test_a_task_argument_completes_file_paths(shell_of):
    assert typed(shell_of, "launch task.\t\r") == "launch task.yaml "
    assert typed(shell_of, "launch -c x tasks/tr\t\r") == "launch -c x tasks/train.yaml "
    assert sorted(completions(shell_of, "launch ta")) == ["sk.yaml", "sks"]   # a file, a dir
    assert typed(shell_of, "launch ta\t\r") == "launch ta"          # two matches: no guess
    assert typed(shell_of, "launch tasks\t\r") == "launch tasks"    # a directory: no space
    assert typed(shell_of, "launch --env-file task.\t\r") == "launch --env-file task.yaml "
    assert typed(shell_of, "jobs launch tasks/\t\r") == "jobs launch tasks/train.yaml "


def test_options_complete_per_command(shell_of):
    found = completions(shell_of, "launch --")
    for opt in ("--cluster", "--detach-run", "--env", "--env-file", "--secret", "--workdir",
                "--num-nodes", "--cpus", "--memory", "--infra", "--idle-minutes-to-autostop",
                "--down", "--json", "--host", "--yes"):
        assert opt in found, opt
    assert "--all" not in found
    found = completions(shell_of, "logs --")
    assert {"--status", "--tail", "--sync-down", "--no-follow"} <= set(found)
    assert completions(shell_of, "jobs cancel --a") == ["--all", "--all-users"]


def test_live_values_complete_in_their_places(shell_of):
    assert completions(shell_of, "exec shel") == ["shellc"]          # exec's first word
    assert completions(shell_of, "exec shellc task.") == ["yaml"]     # then the task
    assert completions(shell_of, "exec -c shellc task.") == ["yaml"]
    assert completions(shell_of, "logs shellc ") == ["1"]            # its jobs
    assert completions(shell_of, "launch -c shel") == ["shellc"]
    assert completions(shell_of, "skyctl status shel") == ["shellc"]  # after a leading skyctl
    assert completions(shell_of, "api s") == ["status"]


# ---- lines as the CLI reads them ------------------------------------------------------------

def test_a_leading_skyctl_is_accepted(shell_of, capfd):
    shell, _ = shell_of()
    assert shell.run_line("skyctl logs shellc 1") == 0
    assert shell.run_line("skyctl queue shellc") == 0
    assert shell.run_line("queue shellc --json") == 0
    out, err = capfd.readouterr()
    assert out.startswith("in-shellc\n") and "Job queue of cluster shellc" in out
    assert '"job_id": 1' in out and "invalid choice" not in err


def test_the_shell_loop_runs_lines_until_exit(shell_of, capfd):
    shell, pipe = shell_of()
    pipe.send_text("skyctl api info\rbogus\rstatus --no-such-flag\rexit\r")
    with create_app_session(input=pipe, output=DummyOutput()):
        assert shell.loop() == 0
    out, err = capfd.readouterr()
    assert "long queue:" in out
    assert "invalid choice: 'bogus'" in err and "unrecognized arguments: --no-such-flag" in err


def test_usage_errors_do_not_leave_the_shell(shell_of, capfd):
    shell, _ = shell_of()
    assert shell.run_line("logs") == 2
    assert shell.run_line('launch "unclosed') == 2
    assert shell.run_line("shell") == 2
    assert shell.run_line("exit") is None
