"""Exit codes: one table, and the one function that turns an outcome into a code.

Every command returns through `exit_code` (README.md, "Exit codes"). Asking for a state a
thing is already in (cancel a finished job, stop a stopped cluster) is not a failure:
skyctl says so on stderr and exits 0.
"""

from __future__ import annotations

from skyd.protocol import ErrorCode

OK = 0            # done; also when the thing already was in the state asked for
FAILED = 1        # the request, or the job it ran, failed
USAGE = 2         # bad arguments, task file, name or id (nothing was queued)
CANCELLED = 3     # the request or job was cancelled
UNREACHABLE = 4   # the daemon cannot be reached, or speaks another protocol version
DENIED = 5        # permission denied (by the daemon, or on its socket)
NOT_FINISHED = 6  # logs --status: the job has not finished yet
DETACHED = 130    # Ctrl-C: stopped following; the request or job goes on

TABLE = [
    (OK, "ok; also when the thing already was in the state asked for (a note on stderr)"),
    (FAILED, "the request, or the job it ran, failed"),
    (USAGE, "usage: bad arguments, task file, cluster, job or request id; nothing was queued"),
    (CANCELLED, "the request or the job was cancelled"),
    (UNREACHABLE, "cannot reach the daemon (or it speaks another protocol version)"),
    (DENIED, "permission denied, by the daemon or on its socket"),
    (NOT_FINISHED, "logs --status: the job has not finished yet"),
    (DETACHED, "detached with Ctrl-C; the request or job keeps running"),
]

_FOR_ERROR = {
    ErrorCode.BAD_REQUEST: USAGE, ErrorCode.TOO_LARGE: USAGE, ErrorCode.UNKNOWN_OP: USAGE,
    ErrorCode.INVALID_TASK: USAGE, ErrorCode.NOT_FOUND: USAGE, ErrorCode.AMBIGUOUS: USAGE,
    ErrorCode.UNSUPPORTED_VERSION: UNREACHABLE, ErrorCode.PERMISSION_DENIED: DENIED,
}

# Final statuses of requests, jobs and managed jobs, in one case; any other is unfinished.
_FOR_STATUS = {"SUCCEEDED": OK, "CANCELLED": CANCELLED}
_FAILED_STATUSES = frozenset({"FAILED", "FAILED_SETUP", "FAILED_PRECHECKS", "FAILED_NO_RESOURCE",
                              "FAILED_CONTROLLER"})


class UsageError(Exception):
    """Bad input found by skyctl itself, before anything is sent."""


def exit_code(outcome: object) -> int:
    """The code for an outcome: an exception skyctl caught, an error code from the daemon,
    or the status a request, job or managed job ended in (any case)."""
    if isinstance(outcome, ErrorCode):
        return _FOR_ERROR.get(outcome, FAILED)
    if isinstance(outcome, BaseException):
        return _for_exception(outcome)
    if not isinstance(outcome, str):
        raise TypeError(f"no exit code for {outcome!r}")
    status = str(getattr(outcome, "value", outcome)).upper()   # requests' are lower case
    if status in _FAILED_STATUSES:
        return FAILED
    return _FOR_STATUS.get(status, NOT_FINISHED)


def _for_exception(e: BaseException) -> int:
    from skyctl.connection import ServerError, SocketDenied, Unreachable
    from skyctl.endpoint import EndpointError
    from skyd.taskspec import TaskError
    if isinstance(e, KeyboardInterrupt):
        return DETACHED
    if isinstance(e, ServerError):
        return exit_code(e.error.code)
    if isinstance(e, SocketDenied):
        return DENIED
    if isinstance(e, Unreachable):
        return UNREACHABLE
    if isinstance(e, (UsageError, TaskError, EndpointError)):
        return USAGE
    if isinstance(e, BrokenPipeError):       # `skyctl status | head`: the reader had enough
        return OK
    return FAILED


def epilog() -> str:
    return "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in TABLE)
