"""`skyctl shell`: an interactive prompt over the same command table as the CLI.

A line is what follows `skyctl` on the command line (a leading `skyctl` is accepted, so
hints the CLI prints can be pasted). Tab completes commands, options, file paths and live
values, and inserts at once when there is one match; history; a bottom toolbar with live
queue depths; a notice when a request started from the shell finishes. prompt_toolkit is
imported here only, so the one-shot CLI never pays for it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
import time
from pathlib import Path
from typing import Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings

from skyctl import commands, output
from skyctl.completion import ShellCompleter
from skyctl.connection import Connection, ServerError, Unreachable
from skyctl.endpoint import resolve
from skyctl.exits import DETACHED, OK
from skyctl.runner import run
from skyd import protocol

REFRESH = 1.0   # seconds between toolbar and completion refreshes


class Live:
    """What the shell knows about the daemon, refreshed at most once per REFRESH."""

    def __init__(self, path: str, source: str):
        self.path, self.source = path, source
        self.clusters: list[str] = []
        self.requests: list[str] = []
        self.managed: list[str] = []
        self.toolbar = ""
        self.watched: dict[str, str] = {}      # request id -> command, started from here
        self._at = 0.0

    def _connect(self) -> Connection:
        return Connection(self.path, self.source, timeout=2).connect()

    def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._at < REFRESH:
            return
        self._at = time.monotonic()
        try:
            with self._connect() as c:
                info = c.call(protocol.ApiInfo())
                self.clusters = [x.name for x in c.call(protocol.ClusterStatus())]
                reqs = c.call(protocol.ApiStatus(all_statuses=True, limit=100))
                self.managed = [str(j.job_id) for j in c.call(protocol.JobsQueue(limit=100))]
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
                print(f"[request {r.id[:8]} ({name}) finished: {r.status.value.upper()}]")

    def values(self, kind: str, words: list[str]) -> Iterable[str]:
        """Live values to complete a word of `kind`; `words` is the line so far."""
        self.refresh()
        if kind == "cluster":
            return self.clusters
        if kind == "request":
            return self.requests
        if kind == "managed_job":
            return self.managed
        if kind == "job":          # the jobs of the cluster named on the line
            cluster = next((w for w in words if w in self.clusters), None)
            if cluster is None:
                return []
            try:
                with self._connect() as c:
                    return [str(j.job_id) for j in c.call(protocol.JobQueue(cluster=cluster))]
            except (Unreachable, ServerError, OSError):
                return []
        return []


def key_bindings(completer: ShellCompleter) -> KeyBindings:
    """Tab: one match is inserted at once (with a space after a finished word); several
    open the menu, with their common part inserted; in the menu, Tab walks it."""
    kb = KeyBindings()

    @kb.add("tab")
    def _(event) -> None:
        buf = event.current_buffer
        if buf.complete_state:
            buf.complete_next()
            return
        found = list(completer.get_completions(buf.document, CompleteEvent(completion_requested=True)))
        if len(found) == 1:
            buf.apply_completion(found[0])
            if not found[0].display_text.endswith("/"):     # a directory: go on into it
                buf.insert_text(" ")
        elif found:
            buf.start_completion(insert_common_part=True)

    return kb


def _history() -> History:
    path = Path.home() / ".local" / "state" / "skyctl" / "history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return InMemoryHistory()
    return FileHistory(str(path))


class Shell:
    def __init__(self, args: argparse.Namespace, input=None, output=None):
        self.path, source = resolve(getattr(args, "host", None))
        self.live = Live(self.path, source)
        self.parser = commands.build_parser()
        completer = ShellCompleter(self.parser, self.live.values)

        def toolbar() -> str:
            self.live.refresh()
            return self.live.toolbar

        self.session: PromptSession[str] = PromptSession(
            history=_history(), completer=completer, complete_while_typing=False,
            key_bindings=key_bindings(completer), bottom_toolbar=toolbar,
            refresh_interval=REFRESH, input=input, output=output)

    def loop(self) -> int:
        self.live.refresh(force=True)
        print("skyctl shell: the commands of the command line (launch, status, api status, ...); "
              "Tab completes; Ctrl-D or 'exit' leaves.")
        while True:
            try:
                line = self.session.prompt("skyctl> ")
            except KeyboardInterrupt:
                continue
            except EOFError:
                return OK
            if self.run_line(line) is None:
                return OK

    def run_line(self, line: str) -> int | None:
        """Run one line; its exit code (None: leave the shell)."""
        try:
            words = shlex.split(line)
        except ValueError as e:
            output.error(str(e))
            return 2
        if words[:1] == ["skyctl"]:
            words = words[1:]
        if words in (["exit"], ["quit"]):
            return None
        if not words or words == ["help"]:
            if words:
                sys.stdout.write(commands.overview())
            return OK
        try:
            args = commands.parse(words, self.parser)
        except SystemExit as e:             # argparse said why (or printed --help)
            return e.code if isinstance(e.code, int) else 2
        if args.command == "shell":
            output.error("already in the shell")
            return 2
        if getattr(args, "host", None) is None:
            args.host = f"unix://{self.path}"     # the daemon the shell was started against
        code = self._run_async(args) if getattr(args, "async_", False) else run(args)
        if code not in (OK, DETACHED):
            output.info(f"(exit code {code})")
        self.live.refresh(force=True)
        return code

    def _run_async(self, args: argparse.Namespace) -> int:
        """As the CLI, but remember the request's id, to say when it finishes."""
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = run(args)
        text = buf.getvalue()
        print(text, end="")
        ids = text.split()
        if code == OK and ids and not getattr(args, "json", False):
            self.live.watched[ids[-1]] = args.command
        return code


def main(args: argparse.Namespace) -> int:
    return Shell(args).loop()
