"""The shell a Slurm cluster runs: the allocation's own batch script, the launcher that
starts a step in it with srun, and the wrapper each node's task runs (SkyPilot's
variables from Slurm's own, the rank prefix on several nodes)."""

from __future__ import annotations

import shlex

from skyd.infra.slurm.settings import SlurmSettings

MARKER = "allocated"         # <cluster dir>/allocated-JOBID: the allocation's script runs


def holder_script(cluster_dir: str) -> str:
    """The allocation's batch script: say that it runs (a file the launch waits for:
    no Slurm command needed to see it), then hold the nodes until cancelled."""
    marker = shlex.quote(f"{cluster_dir}/{MARKER}-")
    return f'touch {marker}"$SLURM_JOB_ID" 2>/dev/null; exec sleep infinity'


def step_argv(settings: SlurmSettings, allocation: str, num_nodes: int, name: str) -> list[str]:
    """srun for one step on every node of the allocation, one task per node, beside the
    allocation's other steps (--overlap); one failing node ends the step on all."""
    return [settings.command("srun"), f"--jobid={allocation}", "--overlap",
            f"--nodes={num_nodes}", f"--ntasks={num_nodes}", "--ntasks-per-node=1",
            f"--job-name={name}", "--kill-on-bad-exit=1", "--quiet"]


def node_wrapper(prefix: str, workdir: str, script: str) -> str:
    """What each node's task runs: SkyPilot's rank and node count from Slurm's (`prefix`
    is SKYPILOT_ or SKYPILOT_SETUP_), in the workdir, the script's lines prefixed with
    their node when there are several."""
    return (f'export {prefix}NODE_RANK="$SLURM_NODEID" {prefix}NUM_NODES="$SLURM_NNODES"\n'
            f"cd {shlex.quote(workdir)} || exit 1\n"
            'if [ "${SLURM_NNODES:-1}" -gt 1 ]; then\n'
            f'  bash {shlex.quote(script)} < /dev/null 2>&1 | sed -u "s/^/(node-$SLURM_NODEID) /"\n'
            '  exit "${PIPESTATUS[0]}"\n'
            "fi\n"
            f"exec bash {shlex.quote(script)} < /dev/null\n")


def launcher(argv: list[str], wrapper: str) -> str:
    """run.sh of a job, run by the local runner on this host: the step's srun client."""
    return "exec " + " ".join(map(shlex.quote, [*argv, "bash", wrapper])) + "\n"
