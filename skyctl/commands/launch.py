"""`launch` and `exec`: run a task on a cluster and follow its output.

JSON (--json): {"request_id", "cluster", "job_id", "job": the job's record or null};
with --async, {"request_id"}. The task's output then goes to stderr with skyd's lines.
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from skyctl import output
from skyctl.commands.common import async_, common, completes, yes
from skyctl.context import Ctx
from skyctl.exits import OK, UsageError
from skyctl.follow import finish_job, follow_request
from skyctl.output import LogWriter
from skyctl.commands.taskargs import add_task_options, task_from_args
from skyd import protocol

TASK_WORDS = ("a task YAML file, or a command to run: the rest of the line "
              "(quote it, or put it after --, when it has options of its own)")


def _timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="fail the request if provisioning and setup take longer than this "
                        "(default: the daemon's, see skyctl api info)")


def add_launch(p: argparse.ArgumentParser) -> None:
    p.usage = "skyctl launch [OPTIONS] [TASK.yaml | COMMAND...]"
    add_task_options(p, TASK_WORDS)
    completes(p.add_argument("-c", "--cluster",
                             help="cluster name: reused if it exists (default: a new one)"),
              "cluster")
    p.add_argument("-i", "--idle-minutes-to-autostop", type=float, metavar="MINUTES",
                   help="stop the cluster after this many idle minutes")
    p.add_argument("--down", action="store_true",
                   help="tear the cluster down when idle instead of stopping it "
                        "(without -i: as soon as its jobs are done)")
    _timeout(p)
    async_(p)
    yes(p)
    common(p)
    p.set_defaults(func=run_launch)


def add_exec(p: argparse.ArgumentParser) -> None:
    p.usage = "skyctl exec [OPTIONS] CLUSTER TASK.yaml | COMMAND..."
    words = add_task_options(p, "the cluster (unless -c names it), then " + TASK_WORDS)
    setattr(words, "complete_first", "cluster")     # the first word, unless -c names it
    completes(p.add_argument("-c", "--cluster", help="the cluster to run on (or the first word)"),
              "cluster")
    _timeout(p)
    async_(p)
    yes(p)
    common(p)
    p.set_defaults(func=run_launch)


ARGUMENTS = {"launch": add_launch, "exec": add_exec}


def run_launch(ctx: Ctx, args: argparse.Namespace) -> int:
    op: protocol.Launch | protocol.Exec
    if args.command == "launch":
        task = task_from_args(args)
        minutes = args.idle_minutes_to_autostop
        if args.down and minutes is None:
            minutes = 0.0             # as SkyPilot: down once its jobs are done
        op = protocol.Launch(task=task, cluster=args.cluster, idle_minutes_to_autostop=minutes,
                             down=args.down, timeout=args.timeout)
    else:
        if args.cluster is None:
            if not args.words:
                raise UsageError("name the cluster to run on: skyctl exec CLUSTER TASK")
            args.cluster = args.words.pop(0)
        if not args.words:
            raise UsageError(f"name the task to run on {args.cluster}: a YAML file or a command")
        op = protocol.Exec(task=task_from_args(args), cluster=args.cluster, timeout=args.timeout)
    log = LogWriter(sys.stderr.buffer if ctx.json else None)
    sub = follow_request(ctx, op, wait=not args.async_, log=log,
                         follow_job=not args.detach_run)
    if args.async_ and sub.code == OK:
        return _print_id(ctx, sub.request_id)
    if sub.result is None or sub.code != OK:
        if ctx.json and sub.result is not None:
            output.print_json({"request_id": sub.request_id, "status": sub.result.status,
                               "error": sub.result.error})
        return sub.code
    launched = msgspec.convert(sub.result.value, protocol.LaunchResult)
    code, job = OK, None
    if launched.job_id is None:
        output.info(f"Cluster {launched.cluster} is ready (the task has no run command).")
    elif args.detach_run:
        output.info(f"Job {launched.job_id} submitted to {launched.cluster}.\n"
                    f"  follow it:  skyctl logs {launched.cluster} {launched.job_id}")
    else:
        code, job = finish_job(ctx, sub, launched, log)
    if ctx.json:
        output.print_json({"request_id": sub.request_id, "cluster": launched.cluster,
                           "job_id": launched.job_id, "job": job})
    return code


def _print_id(ctx: Ctx, request_id: str | None) -> int:
    if ctx.json:
        output.print_json({"request_id": request_id})
    else:
        print(request_id, flush=True)
    return OK
