"""The shell a Slurm cluster runs: the allocation's own batch script, the launcher that
starts a step in it with srun, and the wrapper each node's task runs (SkyPilot's
variables from Slurm's own, the rank prefix on several nodes)."""

from __future__ import annotations

import shlex
from typing import NamedTuple

from skyd.infra.slurm.settings import SlurmSettings

MARKER = "allocated"         # <cluster dir>/allocated-JOBID: the allocation's script runs


def holder_script(cluster_dir: str) -> str:
    """The allocation's batch script: say that it runs and what it holds (a file the
    launch waits for: no Slurm command needed to see it; see parse_marker), then hold
    the nodes until cancelled. Its nodes' names are expanded here, on the allocation's
    first node (`scontrol show hostnames` asks the controller nothing), and only for a
    list of several: the launch then needs no Slurm command for them."""
    marker = shlex.quote(f"{cluster_dir}/{MARKER}-") + '"$SLURM_JOB_ID"'
    return (f"set -f; m={marker}; n=$SLURM_JOB_NODELIST; "
            'case $n in *[[,]*) n=$(scontrol show hostnames "$n" 2>/dev/null) ;; esac; '
            "printf '%s\\n' \"$SLURM_JOB_NODELIST\" \"$SLURM_JOB_NUM_NODES\" "
            "\"$SLURM_JOB_CPUS_PER_NODE\" \"$SLURM_MEM_PER_NODE\" \"$SLURM_NODE_ALIASES\" $n "
            "> \"$m.tmp\" && mv \"$m.tmp\" \"$m\"; exec sleep infinity")


class Held(NamedTuple):
    """What an allocation's marker says it holds."""
    nodelist: str               # Slurm's node list ('node[1-2]')
    nodes: int
    cpus: int                   # per node (the fewest)
    mib: int                    # memory per node (0: not asked for)
    names: list[str]            # the nodes in Slurm's order ([]: the marker does not say)
    addresses: dict[str, str]   # cloud nodes' addresses, as Slurm gives them to the job


def parse_marker(text: str) -> Held | None:
    """What a marker says; None when it is not one. CPUs per node as Slurm writes them:
    '4', '4(x2)', '4,2' (the fewest counts). The node names are those of an allocation
    whose script wrote them (one started before skyd wrote them has none)."""
    lines = text.split("\n")
    if len(lines) < 5 or lines[-1] != "" or not lines[0]:
        return None
    values = lines[:-1]
    try:
        cpus = min(int(part.split("(")[0]) for part in values[2].split(","))
        nodes, mib = int(values[1]), int(values[3] or 0)
    except ValueError:
        return None
    names = values[5:] if len(values) == 5 + nodes and all(values[5:]) else []
    return Held(values[0], nodes, cpus, mib, names, node_aliases(values[4]) if names else {})


def node_aliases(text: str) -> dict[str, str]:
    """SLURM_NODE_ALIASES (cloud nodes: 'name:address:hostname,...', an IPv6 address in
    brackets; '(null)' when there are none): each node's address."""
    found = {}
    for entry in text.split(","):
        name, _, rest = entry.partition(":")
        address = rest.rpartition(":")[0].strip("[]")
        if name and address:
            found[name] = address
    return found


def step_argv(settings: SlurmSettings, allocation: str, num_nodes: int, name: str) -> list[str]:
    """srun for one step on every node of the allocation, one task per node, beside the
    allocation's other steps (--overlap); one failing node ends the step on all."""
    return [settings.command("srun"), f"--jobid={allocation}", "--overlap",
            f"--nodes={num_nodes}", f"--ntasks={num_nodes}", "--ntasks-per-node=1",
            f"--job-name={name}", "--kill-on-bad-exit=1", "--quiet"]


def node_wrapper(prefix: str, workdir: str, script: str) -> str:
    """What each node's task runs (bash): SkyPilot's rank and node count from Slurm's
    (`prefix` is SKYPILOT_ or SKYPILOT_SETUP_), its GPU count from the GPUs Slurm gave the
    step, in the workdir, the script's lines prefixed with their node when there are
    several."""
    return (f'export {prefix}NODE_RANK="$SLURM_NODEID" {prefix}NUM_NODES="$SLURM_NNODES"\n'
            'IFS=, read -ra skyd_gpus <<< "${CUDA_VISIBLE_DEVICES-}"\n'
            'export SKYPILOT_NUM_GPUS_PER_NODE="${#skyd_gpus[@]}"; unset skyd_gpus\n'
            f"cd {shlex.quote(workdir)} || exit 1\n"
            'if [ "${SLURM_NNODES:-1}" -gt 1 ]; then\n'
            f'  bash {shlex.quote(script)} < /dev/null 2>&1 | sed -u "s/^/(node-$SLURM_NODEID) /"\n'
            '  exit "${PIPESTATUS[0]}"\n'
            "fi\n"
            f"exec bash {shlex.quote(script)} < /dev/null\n")


def launcher(argv: list[str], wrapper: str) -> str:
    """run.sh of a job, run by the local runner on this host: the step's srun client."""
    return "exec " + " ".join(map(shlex.quote, [*argv, "bash", wrapper])) + "\n"


def login_step(argv: list[str], wrapper: str, workdir: str, env_file: str) -> str:
    """A job's step on the login node (step.sh, run through an ssh of its own: see
    places.LoginNode.step_launcher): its environment from `env_file` (then removed), srun
    in the background, and a watch on the ssh's stdin — which ends only when the ssh on
    the daemon's side is gone (the job cancelled, its runner killed) — that then ends the
    step (srun passes SIGTERM to every node's task)."""
    env = shlex.quote(env_file)
    return (f"cd {shlex.quote(workdir)} || exit 1\n"
            f"set -a; . {env} || exit 1; set +a; rm -f {env}\n"
            "exec 4<&0 0</dev/null\n"
            + " ".join(map(shlex.quote, [*argv, "bash", wrapper])) + " 4<&- &\n"
            "step=$!\n"
            '{ cat <&4 >/dev/null; kill -TERM "$step"; } >/dev/null 2>&1 &\n'
            "watch=$!\n"
            "exec 4<&-\n"
            'wait "$step"; rc=$?\n'
            'kill "$watch" 2>/dev/null\n'
            'exit "$rc"\n')
