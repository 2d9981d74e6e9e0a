"""`skyctl shell`: an interactive prompt over the same command table as the CLI.

A line is what follows `skyctl` on the command line (a leading `skyctl` is accepted, so
hints the CLI prints can be pasted). Tab completes commands, options, file paths and live
values (refreshed in the background, with a request's status and name beside its id), and
inserts at once when there is one match; history; a bottom toolbar with the endpoint, the
user and live queue depths; a notice above the prompt when a request or a managed job of
yours finishes, from the daemon's `watch` stream (not polled). prompt_toolkit is imported
here only, so the one-shot CLI never pays for it.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.patch_stdout import patch_stdout

from skyctl import commands, output
from skyctl.commands import api
from skyctl.completion import ShellCompleter
from skyctl.connection import Connection, ServerError, Unreachable
from skyctl.endpoint import resolve
from skyctl.exits import DETACHED, OK
from skyctl.runner import run
from skyd import protocol

REDRAW = 1.0        # seconds between toolbar redraws
REFRESH = 5.0       # seconds between background refreshes when no event asks for one sooner
RETRY = 2.0         # seconds before watching again after the daemon went away
JOBS_FRESH = 3.0    # seconds a cluster's job ids are kept for completion


class Live:
    """What the shell knows of the daemon, kept by two background threads: one watches the
    caller's events (the `watch` op: notices of what finished, and a refresh when anything
    changed), the other reloads the live values and the toolbar when told to (or every
    REFRESH for the queue depths). Completion and the toolbar only read what they hold."""

    def __init__(self, path: str, source: str, notify: Callable[[str], None]):
        self.path, self.source = path, source
        self.notify = notify
        self.clusters: list[str] = []
        self.requests: list[tuple[str, str]] = []     # (id, "STATUS name"), newest first
        self.managed: list[tuple[str, str]] = []      # (job id, "STATUS name")
        self.toolbar = f" {source}: connecting..."
        self.in_command = False          # a command runs in the foreground
        self._commands_own: set[str] = set()   # requests accepted while it ran: its own
        self._jobs: dict[str, tuple[float, list[str]]] = {}
        self._stale = threading.Event()
        self._closed = threading.Event()
        self._watch_conn: Connection | None = None
        self.watching = threading.Event()    # the daemon said the watch is on

    def _connect(self) -> Connection:
        return Connection(self.path, self.source, timeout=5).connect()

    def start(self) -> None:
        self._stale.set()
        for target, name in ((self._refresher, "skyctl-refresh"), (self._watcher, "skyctl-watch")):
            threading.Thread(target=target, name=name, daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        self._stale.set()
        conn = self._watch_conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def changed(self) -> None:
        """Reload soon (a command ran, or an event came)."""
        self._stale.set()

    # ---- the refresher ---------------------------------------------------------------------

    def _refresher(self) -> None:
        while not self._closed.is_set():
            self._stale.wait(REFRESH)
            self._stale.clear()
            if not self._closed.is_set():
                self.refresh()

    def refresh(self) -> None:
        try:
            with self._connect() as c:
                info = c.call(protocol.ApiInfo())
                clusters = [x.name for x in c.call(protocol.ClusterStatus())]
                reqs = c.call(protocol.ApiStatus(all_statuses=True, limit=100))
                managed = c.call(protocol.JobsQueue(limit=100))
        except (Unreachable, ServerError, OSError) as e:
            self.toolbar = f" {self.source}: skyd unreachable ({e})"
            return
        self.clusters = clusters
        self.requests = [(r.id, f"{r.status.value.upper()} {r.name}"
                                + (f" {r.cluster}" if r.cluster else "")) for r in reqs]
        self.managed = [(str(j.job_id), f"{j.status.value} {j.name}") for j in managed]
        self.toolbar = (f" {info.user} @ {self.source} | long {info.long_running}/"
                        f"{info.long_slots} running, {info.long_pending} queued | short "
                        f"{info.short_running}/{info.short_slots}, {info.short_pending} queued"
                        f" | clusters {len(clusters)}")

    # ---- the watcher -----------------------------------------------------------------------

    def _watcher(self) -> None:
        while not self._closed.is_set():
            try:
                conn = self._watch_conn = Connection(self.path, self.source).connect()
                with conn:
                    for event in api.events(conn, on_notice=lambda _: self.watching.set()):
                        self._event(event)
            except ServerError as e:
                if e.error.code is not protocol.ErrorCode.BUSY:     # not just fell behind
                    return
                self.changed()
            except (Unreachable, ConnectionError, OSError):
                pass
            self._watch_conn = None
            self._closed.wait(RETRY)

    def _event(self, ev: protocol.Event) -> None:
        self.changed()
        if ev.kind == "request":
            if ev.status == protocol.Status.PENDING.value and self.in_command:
                self._commands_own.add(ev.id)
            elif ev.status in FINISHED and ev.id not in self._commands_own:
                what = f"{ev.name} {ev.cluster}".strip()
                self.notify(f"[request {ev.id[:8]} ({what}) finished: {ev.status.upper()}"
                            + (f": {ev.detail}]" if ev.detail else "]"))
        elif ev.kind == "managed_job" and ev.status in MANAGED_FINISHED:
            self.notify(f"[managed job {ev.id} ({ev.name}) finished: {ev.status}"
                        + (f": {ev.detail}]" if ev.detail else "]"))

    def command_started(self) -> None:
        self._commands_own.clear()
        self.in_command = True

    def command_ended(self) -> None:
        self.in_command = False
        self.changed()

    # ---- for completion --------------------------------------------------------------------

    def values(self, kind: str, words: list[str]) -> Iterable[str | tuple[str, str]]:
        """Live values to complete a word of `kind` (with meta where there is one); `words`
        is the line so far."""
        if kind == "cluster":
            return self.clusters
        if kind == "request":
            return self.requests
        if kind == "managed_job":
            return self.managed
        if kind == "job":          # the jobs of the cluster named on the line: asked on Tab
            cluster = next((w for w in words if w in self.clusters), None)
            return [] if cluster is None else self._jobs_of(cluster)
        return []

    def _jobs_of(self, cluster: str) -> list[str]:
        at, ids = self._jobs.get(cluster, (0.0, []))
        if time.monotonic() - at < JOBS_FRESH:
            return ids
        try:
            with self._connect() as c:
                ids = [str(j.job_id) for j in c.call(protocol.JobQueue(cluster=cluster))]
        except (Unreachable, ServerError, OSError):
            return []
        self._jobs[cluster] = (time.monotonic(), ids)
        return ids


FINISHED = frozenset(s.value for s in protocol.FINISHED)
MANAGED_FINISHED = frozenset(s.value for s in protocol.MANAGED_FINISHED)


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
        self.endpoint = f"unix://{self.path}" if isinstance(self.path, str) else str(self.path)
        # TODO(remote access): open the live connections as Ctx does, for ssh:// and tcp://.
        self.live = Live(self.path if isinstance(self.path, str) else self.endpoint,
                         self.endpoint, self.notify)
        self.live.refresh()             # once now: Tab works from the first prompt
        self.parser = commands.build_parser()
        completer = ShellCompleter(self.parser, self.live.values)
        self.session: PromptSession[str] = PromptSession(
            history=_history(), completer=completer, complete_while_typing=False,
            key_bindings=key_bindings(completer), bottom_toolbar=lambda: self.live.toolbar,
            refresh_interval=REDRAW, input=input, output=output)

    @staticmethod
    def notify(text: str) -> None:
        """A notice for the person: above the prompt while it is shown (patch_stdout),
        else among a running command's other notes, on stderr."""
        print(text, file=sys.stderr, flush=True)

    def loop(self) -> int:
        self.live.start()
        print("skyctl shell: the commands of the command line (launch, status, api status, ...); "
              "Tab completes; Ctrl-D or 'exit' leaves.")
        try:
            while True:
                try:
                    with patch_stdout(raw=True):
                        line = self.session.prompt("skyctl> ")
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    return OK
                if self.run_line(line) is None:
                    return OK
        finally:
            self.live.close()

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
            args.host = self.endpoint       # the daemon the shell was started against
        self.live.command_started()
        try:
            code = run(args)
        finally:
            self.live.command_ended()
        if code not in (OK, DETACHED):
            output.info(f"(exit code {code})")
        return code


def main(args: argparse.Namespace) -> int:
    return Shell(args).loop()
