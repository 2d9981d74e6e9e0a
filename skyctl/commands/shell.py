"""`shell`: its arguments. The shell itself is skyctl.shell, which the CLI starts (it is
the only module that imports prompt_toolkit)."""

from __future__ import annotations

import argparse

from skyctl.commands.common import common


def add_shell(p: argparse.ArgumentParser) -> None:
    p.description = ("An interactive shell: the same commands (a leading `skyctl` is "
                     "accepted), Tab completion of commands, options, files, clusters and "
                     "ids, and the daemon's queue depths below the prompt.")
    common(p, json_help=None)
    p.set_defaults(func=None)


ARGUMENTS = {"shell": add_shell}
