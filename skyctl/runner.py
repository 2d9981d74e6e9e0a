"""Running one parsed command, for the CLI and the shell alike: every way it can end goes
through exits.exit_code, and every error is said once, on stderr."""

from __future__ import annotations

import argparse

from skyctl import output
from skyctl.connection import ServerError, Unreachable
from skyctl.context import Ctx
from skyctl.endpoint import EndpointError
from skyctl.exits import UsageError, exit_code
from skyd.taskspec import TaskError


def run(args: argparse.Namespace) -> int:
    ctx = None
    try:
        ctx = Ctx(args)
        return args.func(ctx, args)
    except TaskError as e:
        output.error(f"invalid task: {e}")
        return exit_code(e)
    except ServerError as e:
        output.error(e.error.message, e.error.hint)
        return exit_code(e)
    except (UsageError, EndpointError, Unreachable) as e:
        output.error(str(e))
        return exit_code(e)
    except (KeyboardInterrupt, BrokenPipeError) as e:
        return exit_code(e)
    finally:
        if ctx is not None:
            ctx.close()
