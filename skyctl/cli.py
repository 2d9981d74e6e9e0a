"""skyctl: the one-shot command line. The commands are the table in skyctl.commands,
shared with the shell; this module reads the command line, runs it, and exits with the
code exits.exit_code gave it."""

from __future__ import annotations

import gc
import os
import sys

from skyctl import commands
from skyctl.exits import DETACHED, OK
from skyctl.runner import run


def main(argv: list[str] | None = None) -> int:
    # What skyctl imported lives until it exits: frozen, the collections while the command
    # runs and the full ones at interpreter exit skip it (~15 M instructions, 8 % of a cold
    # `skyctl status`). A command makes little cyclic garbage; the shell's is still collected.
    gc.freeze()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.stdout.write(commands.overview())
        return OK
    args = commands.parse(argv)
    try:
        if args.command == "shell":
            from skyctl.shell import main as shell_main
            return shell_main(args)
        return run(args)
    except KeyboardInterrupt:
        return DETACHED
    finally:
        _quiet_broken_pipe()


def _quiet_broken_pipe() -> None:
    """`skyctl status | head -1`: once the reader is gone, the exit's flush must not
    print a traceback."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
