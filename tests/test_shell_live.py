"""The shell's live side against a real daemon: completion values refreshed in the
background from the daemon's events, request ids with their status and name, and a notice
above the prompt when a request finishes, the line being typed kept. Driven through
prompt_toolkit's pipe input and a dummy output that records what is drawn."""

from __future__ import annotations

import argparse
import threading

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from conftest import wait_until
from skyctl.shell import Shell


class Recorded(DummyOutput):
    """A dummy output that keeps what the application writes."""

    def __init__(self) -> None:
        self.text: list[str] = []

    def write(self, data: str) -> None:
        self.text.append(data)

    write_raw = write

    def seen(self) -> str:
        return "".join(self.text)


@pytest.fixture
def home(workdir, monkeypatch):
    monkeypatch.setenv("HOME", str(workdir))
    monkeypatch.chdir(workdir)


def completions(shell: Shell, text: str) -> dict[str, str]:
    found = shell.session.completer.get_completions(Document(text),
                                                    CompleteEvent(completion_requested=True))
    return {c.text: c.display_meta_text for c in found}


def test_completion_follows_the_daemon_in_the_background(daemon, home):
    with create_pipe_input() as pipe:
        shell = Shell(argparse.Namespace(host=daemon.host), input=pipe, output=DummyOutput())
        shell.live.start()
        try:
            assert shell.live.watching.wait(10)
            assert "later" not in completions(shell, "status ")
            daemon.skyctl("launch", "-c", "later", "echo", "x", check=True)
            assert wait_until(lambda: "later" in completions(shell, "status la"), timeout=10)
            assert wait_until(lambda: any("launch later" in m for m in
                                          completions(shell, "api status ").values()), timeout=10)
            meta = [m for m in completions(shell, "api logs ").values() if "launch later" in m]
            assert meta == ["SUCCEEDED launch later"], meta
            daemon.skyctl("jobs", "launch", "-n", "bg", "true", check=True)
            assert wait_until(lambda: "1" in completions(shell, "jobs logs "), timeout=10)
            assert "bg" in completions(shell, "jobs logs ")["1"]
            assert "root @ unix://" in shell.live.toolbar and "long " in shell.live.toolbar
        finally:
            shell.live.close()


def test_a_notice_above_the_prompt_keeps_the_line(daemon, home, capfd):
    out = Recorded()
    with create_pipe_input() as pipe, create_app_session(input=pipe, output=out):
        shell = Shell(argparse.Namespace(host=daemon.host), input=pipe, output=out)

        def person() -> None:
            assert shell.live.watching.wait(10)
            pipe.send_text("api in")                      # half a line typed...
            p = daemon.skyctl("launch", "-c", "bgc", "--async", "echo", "x")
            assert p.returncode == 0, p.stderr
            wait_until(lambda: "finished: SUCCEEDED" in out.seen(), timeout=20)
            pipe.send_text("fo\r")                        # ... and finished after the notice
            pipe.send_text("exit\r")
        typing = threading.Thread(target=person, daemon=True)
        typing.start()
        assert shell.loop() == 0
        typing.join(5)
    assert "(launch bgc) finished: SUCCEEDED" in out.seen()
    stdout, _ = capfd.readouterr()
    assert "long queue:" in stdout                       # `api info` ran: the line was kept
