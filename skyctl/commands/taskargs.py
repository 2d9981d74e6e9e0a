"""The task options of launch, exec and jobs launch, in SkyPilot's names, and the Task
they make: a YAML file or a command (the rest of the line, unquoted as `sky launch` takes
it), with the command line's overrides. Everything here is checked before anything is
queued: the YAML, the overrides, the env files, the local workdir and file_mounts."""

from __future__ import annotations

import argparse

from skyctl.commands.common import completes
from skyctl.exits import UsageError
from skyd.taskspec import Task


def add_task_options(p: argparse.ArgumentParser, words_help: str) -> argparse.Action:
    """The task options; returns the action of the task's words."""
    words = completes(p.add_argument("words", nargs="*", metavar="TASK", help=words_help), "path")
    p.add_argument("-d", "--detach-run", action="store_true",
                   help="return once the job is submitted, without following its output")
    p.add_argument("-n", "--name", help="task name (overrides the YAML's)")
    completes(p.add_argument("--workdir", metavar="DIR",
                             help="directory to sync to the nodes (overrides the YAML's)"), "path")
    p.add_argument("--num-nodes", type=int, metavar="N",
                   help="number of nodes (overrides the YAML's)")
    p.add_argument("--cpus", help="CPUs per node: 4 (exactly) or 4+ (at least); overrides the YAML's")
    p.add_argument("--memory", help="memory per node in GiB: 16 or 16+; overrides the YAML's")
    p.add_argument("--gpus", metavar="MODEL[:COUNT]",
                   help="GPUs per node, e.g. H100:8 or A100 (one); overrides the YAML's "
                        "resources.accelerators")
    p.add_argument("--infra", help="where to run: local (default), ssh/POOL, slurm or "
                                   "slurm/PARTITION; overrides the YAML's")
    p.add_argument("--env", action="append", metavar="KEY[=VALUE]",
                   help="environment variable for setup and run; KEY alone passes your value "
                        "(repeatable; wins over --env-file and the YAML)")
    completes(p.add_argument("--env-file", metavar="FILE",
                             help="a dotenv file of environment variables (KEY=VALUE lines)"),
              "path")
    p.add_argument("--secret", action="append", metavar="KEY[=VALUE]",
                   help="like --env, but redacted in logs and listings (repeatable)")
    return words


def entrypoint(words: list[str]) -> str | None:
    """One word: a YAML file or a command; several: a command, joined as SkyPilot does."""
    from skyctl.taskfile import looks_like_file
    if not words:
        return None
    if len(words) > 1 and words[0].endswith((".yaml", ".yml")) and looks_like_file(words[0]):
        raise UsageError(f"a task file takes no further words: {' '.join(words[1:])} "
                         "(options go before or after it; a command goes without a file)")
    return " ".join(words)


def task_from_args(args: argparse.Namespace) -> Task:
    from skyctl import taskfile
    envs = taskfile.parse_env_file(args.env_file) if args.env_file else {}
    envs.update(taskfile.parse_env(args.env))
    overrides = {"cpus": args.cpus, "memory": args.memory, "infra": args.infra,
                 "accelerators": args.gpus,
                 "num_nodes": args.num_nodes, "workdir": args.workdir, "name": args.name,
                 "envs": envs, "secrets": taskfile.parse_env(args.secret, "--secret")}
    return taskfile.load(entrypoint(args.words), overrides)
