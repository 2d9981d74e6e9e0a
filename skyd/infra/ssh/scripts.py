"""The shell that runs on a node: the job's detached runner, the environment it reads,
the test whether a runner still lives, and how a job is cancelled or killed."""

from __future__ import annotations

import shlex

from skyd.infra.base import NodeProc

KILL_GRACE = 3              # seconds between SIGTERM and SIGKILL when cancelling

# The runner on a node: read the job's environment and delete it at once (secrets are
# never left in a file once the job has started), run the user's script, then record how
# it ended. Cancel writes the `cancelled` marker first, then signals the whole session.
# Starting a job is idempotent: only the first runner (mkdir is atomic) reads the
# environment and runs the script; one started again (the daemon died between starting
# it and recording that) follows the first to its end instead and needs no env.sh. The
# environment is applied in a subshell, so a task variable cannot change the runner's own.
RUNNER = r'''
jobdir=$1
if mkdir "$jobdir/started" 2>/dev/null; then
  echo $$ > "$jobdir/started/pid"
  skyd_env=$(cat "$jobdir/env.sh" 2>/dev/null)
  rm -f "$jobdir/env.sh"
  (eval "$skyd_env"; unset skyd_env; exec bash "$1/run.sh" < /dev/null)
  rc=$?
  printf '%s\n' "$rc" > "$jobdir/exit_code.tmp" && mv "$jobdir/exit_code.tmp" "$jobdir/exit_code"
  exit $rc
fi
i=0
while [ ! -s "$jobdir/started/pid" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
first=$(cat "$jobdir/started/pid" 2>/dev/null)
trap '[ -n "$first" ] && kill -TERM -- -$first 2>/dev/null' TERM
while [ -n "$first" ] && kill -0 "$first" 2>/dev/null; do sleep 0.5 & wait $!; done
[ -e "$jobdir/exit_code" ] && exit "$(cat "$jobdir/exit_code")"
exit 1
'''


# Is the runner $pid (started at $start) still running? A zombie is not: the runner's
# parent is gone, and init may take a while to reap it.
ALIVE = ("alive() { s=$(cat /proc/$pid/stat 2>/dev/null) || return 1; set -- ${s##*) }; "
         "[ \"$1\" != Z ] && [ \"${20}\" = \"$start\" ]; }\n")


def node_dir(cluster: str, rank: int) -> str:
    """A node's files, relative to the login's home (0700)."""
    return f".skyd/{cluster}/node-{rank}"


def env_script(env: dict[str, str]) -> str:
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def tethered(command: str) -> str:
    """A block for a POSIX shell (bash -s, or a login shell that is dash) that runs
    `command` in a session of its own and ends that session when the block's standard
    input, the ssh channel, closes: once the worker, its ssh client or the connection is
    gone (a cancel, a time limit, a crash), a setup does not go on alone on the node. A
    stopped one is continued so that it takes the TERM; KILL follows after the grace.
    Parsed whole before it runs, so the watcher reads none of it. (The channel goes to the
    watcher through fd 3: a background job's own stdin is /dev/null without job control.)"""
    # Without job control (set +m) the background job is no process group leader, so
    # setsid makes it one in place: $! is the session's id.
    return ("{\n"
            "set +m\n"
            "exec 3<&0\n"
            f"setsid bash -c {shlex.quote(command)} < /dev/null 3<&- &\n"
            "pid=$!\n"
            "( while read -r _; do :; done; kill -TERM -$pid; kill -CONT -$pid; "
            f"sleep {KILL_GRACE}; kill -KILL -$pid ) <&3 >/dev/null 2>&1 &\n"
            "watch=$!\n"
            "exec 3<&-\n"
            "wait $pid; rc=$?\n"
            "kill $watch 2>/dev/null\n"
            "exit $rc\n"
            "}\n")


def kill_script(np: NodeProc, graceful: bool) -> str:
    """Mark the job cancelled and signal its session; escalate after a grace period."""
    jobdir = shlex.quote(np.jobdir)
    if np.pid <= 0:                      # never started: `kill -- -0` would hit the shell
        # and never will: its environment (secrets) goes now
        return (f"touch {jobdir}/cancelled; rm -f {jobdir}/env.sh\n" if graceful
                else f"rm -f {jobdir}/env.sh\n")
    if not graceful:
        return f"kill -KILL -- -{np.pid} 2>/dev/null; true\n"
    return (f"touch {jobdir}/cancelled\nkill -TERM -- -{np.pid} 2>/dev/null\n"
            f"i=0; while kill -0 {np.pid} 2>/dev/null && [ $i -lt {KILL_GRACE * 10} ]; "
            "do sleep 0.1; i=$((i+1)); done\n"
            f"kill -KILL -- -{np.pid} 2>/dev/null; true\n")
