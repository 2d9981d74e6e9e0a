"""The command table, shared by the one-shot CLI and the shell: one row per command, in
SkyPilot's names and groups. A row names the module that defines its arguments and runs
it; a one-shot skyctl imports and builds only the command it runs (its cold start is
part of the product), the shell builds them all.
"""

from __future__ import annotations

import argparse
import importlib
import os

# argparse looks up a translation for every help string it is given, and each lookup stats
# the locale directories (no catalogue exists, so nothing is cached): ~1.5 ms of every
# start. Python ships no translations of argparse's messages; skyctl's own are English.
argparse._ = lambda text: text  # type: ignore[attr-defined]
argparse.ngettext = lambda one, many, n: one if n == 1 else many  # type: ignore[attr-defined]


class Command:
    """One row. (A plain class: a NamedTuple evaluates its annotations at import.)"""

    __slots__ = ("name", "group", "summary", "module", "aliases", "subcommands")

    def __init__(self, name: str, group: str, summary: str, module: str,
                 aliases: tuple[str, ...] = (), subcommands: tuple[str, ...] = ()):
        self.name, self.group, self.summary = name, group, summary
        self.module = module                # defines ARGUMENTS: {name: adds its arguments}
        self.aliases, self.subcommands = aliases, subcommands


CLUSTERS, JOBS, MANAGED, INFRA, API, OTHER = (
    "Clusters", "Jobs on a cluster", "Managed jobs", "Infrastructure", "Requests (API server)",
    "Interactive")

TABLE = [
    Command("launch", CLUSTERS, "launch a task on a new or existing cluster", "skyctl.commands.launch"),
    Command("exec", CLUSTERS, "run a task as a new job on an existing cluster (no setup)",
            "skyctl.commands.launch"),
    Command("status", CLUSTERS, "show clusters", "skyctl.commands.clusters"),
    Command("stop", CLUSTERS, "stop clusters (jobs are killed, nodes kept)", "skyctl.commands.clusters"),
    Command("start", CLUSTERS, "start stopped clusters", "skyctl.commands.clusters"),
    Command("down", CLUSTERS, "tear clusters down (everything removed)", "skyctl.commands.clusters"),
    Command("autostop", CLUSTERS, "stop or tear down clusters after an idle time",
            "skyctl.commands.clusters"),
    Command("queue", JOBS, "show the job queue of clusters", "skyctl.commands.jobs"),
    Command("logs", JOBS, "follow or print a job's output, or its status", "skyctl.commands.jobs"),
    Command("cancel", JOBS, "cancel jobs on a cluster", "skyctl.commands.jobs"),
    Command("jobs", MANAGED, "managed jobs: their own cluster, recovered, torn down",
            "skyctl.commands.managed", subcommands=("launch", "queue", "logs", "cancel")),
    Command("check", INFRA, "ssh node pools: hosts, reachability, CPUs, memory, GPUs",
            "skyctl.commands.infra", aliases=("infra",)),
    Command("gpus", INFRA, "GPUs of every host: model, free, held by whom", "skyctl.commands.gpus",
            aliases=("show-gpus",)),
    Command("api", API, "the daemon's requests, and the daemon itself", "skyctl.commands.api",
            subcommands=("status", "logs", "cancel", "info")),
    Command("shell", OTHER, "an interactive shell: these commands, with completion",
            "skyctl.commands.shell"),
    Command("dial-stdio", OTHER, "bridge stdin/stdout to the daemon's socket (what ssh:// runs "
            "on the VM)", "skyctl.commands.dial"),
]


def row_of(word: str) -> Command | None:
    for row in TABLE:
        if word == row.name or word in row.aliases:
            return row
    return None


def overview() -> str:
    """What bare `skyctl` prints: the commands by group, as `sky --help` lists them."""
    return f"usage: {USAGE}\n\n{_groups()}\n"


USAGE = "skyctl COMMAND [OPTIONS] [ARGS]..."


def _groups() -> str:
    lines = ["skyctl talks to skyd, the request server for AI compute, in SkyPilot's commands."]
    group = None
    for row in TABLE:
        if row.group != group:
            group = row.group
            lines += ["", f"{group}:"]
        name = row.name + (f" ({', '.join(row.aliases)})" if row.aliases else "")
        if row.subcommands:
            name += " " + "|".join(row.subcommands)
        lines.append(f"  {name:30} {row.summary[0].upper()}{row.summary[1:]}")
    lines += ["", "skyctl COMMAND --help shows a command's options, skyctl --help the exit codes.",
              "Every command takes --host ADDRESS, and all but shell take --json."]
    return "\n".join(lines)


_columns: int | None = None


class Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, without importing shutil on every add_argument (argparse makes a
    formatter there to check metavars; shutil is ~3 ms of a cold start)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 30,
                 width: int | None = None):
        global _columns
        if width is None:
            if _columns is None:
                try:
                    _columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
                except (ValueError, OSError):
                    _columns = 80
            width = max(_columns, 40) - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def add_parser(sub, name: str, summary: str, aliases: tuple[str, ...] = (),
               description: str | None = None) -> argparse.ArgumentParser:
    """A (sub)command's parser, with skyctl's formatter."""
    text = description or _describe(summary)
    return sub.add_parser(name, aliases=list(aliases), description=text,
                          formatter_class=Formatter)


def _describe(summary: str) -> str:
    return summary[0].upper() + summary[1:] + "."


def command_parser(row: Command) -> argparse.ArgumentParser:
    """One command's parser alone, as `skyctl NAME` (what a one-shot skyctl builds)."""
    p = argparse.ArgumentParser(prog=f"skyctl {row.name}", description=_describe(row.summary),
                                formatter_class=Formatter)
    importlib.import_module(row.module).ARGUMENTS[row.name](p)
    return p


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command table as argparse parsers (the shell's, and --help's). With `only` (a
    command's name), only that command is built."""
    from skyctl.commands.common import host
    from skyctl.exits import epilog
    from skyd import __version__
    parser = argparse.ArgumentParser(prog="skyctl", usage=USAGE, description=_groups(),
                                     epilog=epilog(), formatter_class=Formatter)
    parser.add_argument("--version", action="version", version=f"skyctl {__version__}")
    host(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                prog="skyctl", help=argparse.SUPPRESS)
    for row in TABLE:
        if only is not None and only != row.name:
            continue
        p = add_parser(sub, row.name, row.summary, row.aliases)
        importlib.import_module(row.module).ARGUMENTS[row.name](p)
    return parser


def parse(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """A command line as the CLI and the shell read it. Words argparse does not know
    after a task command's words are part of that command (`skyctl launch -c dev python
    train.py --epochs 3`, as `sky launch` takes it); elsewhere they are an error."""
    row = row_of(argv[0]) if parser is None and argv else None
    if row is not None:         # `skyctl COMMAND ...`: its parser alone (cold start)
        parser = command_parser(row)
        args, extras = parser.parse_known_args(argv[1:])
        args.command = row.name
    else:
        parser = parser or build_parser(only=_command_word(argv))
        args, extras = parser.parse_known_args(argv)
    if extras:
        words = getattr(args, "words", None)
        own: argparse.ArgumentParser = getattr(args, "parser_", parser)
        if extras[0] == "--":
            extras = extras[1:]
        if words is None or _option_before_words(own, argv) is not None:
            own.error(f"unrecognized arguments: {' '.join(extras)}")
        words.extend(extras)
    return args


def _command_word(argv: list[str]) -> str | None:
    """The command a command line runs, if it names one (else the full table is built)."""
    after_host = False
    for word in argv:
        if after_host or word.startswith("--host="):
            after_host = False
        elif word == "--host":
            after_host = True
        elif not word.startswith("-"):
            row = row_of(word)
            return row.name if row else None
    return None


def _option_before_words(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """An option `parser` does not know that comes before a task command's first word
    (`skyctl launch --bogus echo`): a mistake, not part of the command."""
    commands_left = len(parser.prog.split()) - 1        # "skyctl jobs launch": 2 words
    take_value = False
    for word in argv:
        if take_value:
            take_value = False
        elif word == "--":
            return None
        elif word.startswith("-") and word != "-":
            action = parser._option_string_actions.get(word.split("=", 1)[0])
            if action is None:
                return word
            take_value = "=" not in word and action.nargs != 0
        elif commands_left:
            commands_left -= 1
        else:
            return None
    return None
