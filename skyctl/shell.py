"""`skyctl shell`: an interactive prompt over the same command table as the CLI.

Completion of commands, cluster names and request ids; history; a bottom toolbar with
live queue depths; a notice when a request you started from the shell finishes.
prompt_toolkit is imported here only, so the one-shot CLI never pays for it.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.history import FileHistory

from skyctl import cli, output
from skyctl.connection import Connection, ServerError, Unreachable
from skyctl.endpoint import resolve
from skyd import protocol

REFRESH = 1.0   # seconds between toolbar/completion refreshes


def _commands() -> dict[str, list[str]]:
    """Top-level commands and their sub-commands, read from the CLI's own parser."""
    parser = cli.build_parser()
    table: dict[str, list[str]] = {}
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]  # argparse's own
        for name, sub in action.choices.items():  # type: ignore[union-attr]
            subs = []
            if sub._subparsers is not None:                    # noqa: SLF001
                for a in sub._subparsers._group_actions:       # noqa: SLF001
                    subs = list(a.choices)
            table[name] = subs
    table.pop("shell", None)
    return table


class Live:
    """What the shell knows about the server, refreshed at most once per REFRESH."""

    def __init__(self, path: str, source: str):
        self.path, self.source = path, source
        self.clusters: list[str] = []
        self.requests: list[str] = []
        self.toolbar = ""
        self.watched: dict[str, str] = {}      # request id -> name, started from here
        self._at = 0.0

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._at < REFRESH:
            return
        self._at = time.monotonic()
        try:
            with Connection(self.path, self.source, timeout=2).connect() as c:
                info = c.call(protocol.ApiInfo())
                self.clusters = [x.name for x in c.call(protocol.ClusterStatus())]
                reqs = c.call(protocol.ApiStatus(all_statuses=True, limit=100))
        except (Unreachable, ServerError, OSError) as e:
            self.toolbar = f" skyd unreachable: {e}"
            return
        self.requests = [r.id for r in reqs]
        self.toolbar = (f" {info.user}@skyd {info.version} | long {info.long_running}/"
                        f"{info.long_slots} running, {info.long_pending} queued | short "
                        f"{info.short_running}/{info.short_slots} | clusters {len(self.clusters)}")
        for r in reqs:
            if r.id in self.watched and r.status.finished:
                name = self.watched.pop(r.id)
                print(f"[request {r.id[:8]} ({name}) finished: {r.status.value}]")


class ShellCompleter(Completer):
    def __init__(self, live: Live):
        self.live = live
        self.commands = _commands()

    def get_completions(self, document, complete_event):
        words = document.text_before_cursor.split()
        if document.text_before_cursor.endswith(" "):
            words.append("")
        if not words:
            return
        word = words[-1]
        if len(words) == 1:
            options = list(self.commands) + ["exit", "help"]
        elif len(words) == 2 and self.commands.get(words[0]):
            options = self.commands[words[0]]
        elif words[0] == "api":
            self.live.refresh()
            options = self.live.requests
        else:
            self.live.refresh()
            options = self.live.clusters
        for opt in options:
            if opt.startswith(word):
                yield Completion(opt, start_position=-len(word))


def _history_path() -> Path:
    path = Path.home() / ".local" / "state" / "skyctl" / "history"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def main(args: argparse.Namespace) -> int:
    path, source = resolve(getattr(args, "host", None))
    live = Live(path, source)
    live.refresh(force=True)
    def toolbar() -> str:
        live.refresh()
        return live.toolbar

    session: PromptSession[str] = PromptSession(history=FileHistory(str(_history_path())),
                                                completer=ShellCompleter(live),
                                                bottom_toolbar=toolbar, refresh_interval=REFRESH)
    parser = cli.build_parser()
    print("skyctl shell: commands as on the command line (launch, status, api status, ...); "
          "Tab completes; Ctrl-D or 'exit' leaves.")
    while True:
        try:
            line = session.prompt("skyctl> ").strip()
        except KeyboardInterrupt:
            continue
        except EOFError:
            return output.OK
        if not line:
            continue
        if line in ("exit", "quit"):
            return output.OK
        if line == "help":
            parser.print_help()
            continue
        try:
            sub = parser.parse_args(shlex.split(line))
        except SystemExit:
            continue          # argparse printed the usage error
        except ValueError as e:
            output.error(str(e))
            continue
        if getattr(sub, "host", None) is None:
            sub.host = f"unix://{path}"     # the server the shell was started against
        if sub.command == "shell":
            output.error("already in the shell")
            continue
        if getattr(sub, "async_", False):
            _run_async(sub, live)
        else:
            code = cli.run(sub)
            if code not in (output.OK, output.DETACHED):
                output.info(f"(exit code {code})")
        live.refresh(force=True)


def _run_async(sub: argparse.Namespace, live: Live) -> None:
    """Like the CLI, but remember the id to say when it finishes."""
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.run(sub)
    text = buf.getvalue()
    print(text, end="")
    if code == output.OK and text.strip():
        live.watched[text.strip().splitlines()[-1]] = sub.command
