"""Managed jobs: `jobs launch|queue|logs|cancel`. A managed job gets its own cluster, is
relaunched when the cluster or a node is lost, and its cluster is torn down at the end.

JSON (--json): launch: the job's record once it ends (with -d: once queued; with --async:
{"request_id", "job_id"}); queue: [job record]; logs: the job's record (its output then
goes to stderr); cancel: [job id] of the jobs cancelled.
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from skyctl import output
from skyctl.commands import add_parser
from skyctl.commands.common import async_, common, completes, job_id, yes
from skyctl.connection import ServerError
from skyctl.context import Ctx
from skyctl.exits import FAILED, OK, UsageError, exit_code
from skyctl.follow import follow_managed
from skyctl.output import LogWriter
from skyctl.commands.taskargs import add_task_options, task_from_args
from skyd import protocol
from skyd.protocol import Accepted, Error, Result


def add_jobs(parser: argparse.ArgumentParser) -> None:
    jobs = parser.add_subparsers(dest="jobs_command", required=True, metavar="JOBS_COMMAND",
                                 prog="skyctl jobs")
    p = add_parser(jobs, "launch", "queue a managed job and follow its output", description=(
        "Queue a managed job and follow its output (--async: print the request id and "
        "return). The job gets its own cluster, is relaunched when the cluster or a node is "
        "lost, retried after its own failures up to resources.job_recovery."
        "max_restarts_on_errors, and its cluster is torn down at the end, whatever the "
        "outcome."))
    p.usage = "skyctl jobs launch [OPTIONS] TASK.yaml | COMMAND..."
    add_task_options(p, "a task YAML file, or a command to run: the rest of the line")
    p.add_argument("--priority", type=int, default=500, metavar="0-1000",
                   help="among your own waiting jobs, higher gets freed GPUs first (default 500)")
    async_(p)
    yes(p)
    common(p)
    p.set_defaults(func=run_launch)

    p = add_parser(jobs, "queue", "list managed jobs (newest first)")
    completes(p.add_argument("job_ids", nargs="*", type=job_id, metavar="ID"), "managed_job")
    p.add_argument("-a", "-v", "--all", action="store_true",
                   help="show every column (infra, cluster, restarts, reason)")
    p.add_argument("-u", "--all-users", action="store_true", help="every user's jobs (admins only)")
    p.add_argument("-s", "--skip-finished", action="store_true", help="only unfinished jobs")
    p.add_argument("-l", "--limit", type=int, default=0, help="at most this many (default: all)")
    common(p)
    p.set_defaults(func=run_queue)

    p = add_parser(jobs, "logs", "follow a managed job's output (all its attempts)")
    completes(p.add_argument("job_id", nargs="?", type=job_id, metavar="ID",
                             help="default: your latest"), "managed_job")
    p.add_argument("-n", "--name", help="the newest of your jobs with this name")
    p.add_argument("--follow", dest="no_follow", action="store_false", default=False,
                   help="follow until the job ends (the default)")
    p.add_argument("--no-follow", action="store_true", help="print what is there and return")
    p.add_argument("--controller", action="store_true",
                   help="the controller's log: state changes, launch and teardown output")
    common(p, json_help="print the job's record as JSON (its output goes to stderr)")
    p.set_defaults(func=run_logs)

    p = add_parser(jobs, "cancel", "cancel managed jobs (queued ones never start)")
    completes(p.add_argument("job_ids", nargs="*", type=job_id, metavar="ID"), "managed_job")
    p.add_argument("-n", "--name", help="your unfinished jobs with this name")
    p.add_argument("-a", "--all", action="store_true", help="all of your unfinished jobs")
    p.add_argument("-u", "--all-users", action="store_true", help="everyone's (admins only)")
    yes(p)
    common(p)
    p.set_defaults(func=run_cancel)


ARGUMENTS = {"jobs": add_jobs}


def run_launch(ctx: Ctx, args: argparse.Namespace) -> int:
    if not args.words:
        raise UsageError("name the task: a YAML file or a command")
    if not 0 <= args.priority <= 1000:
        raise UsageError(f"--priority must be between 0 and 1000, got {args.priority}")
    op = protocol.JobsLaunch(task=task_from_args(args), name=args.name, priority=args.priority)
    job = None
    for msg in ctx.conn.submit(op, wait=not args.async_):
        if isinstance(msg, Error):
            output.error(msg.message, msg.hint)
            return exit_code(msg.code)
        if isinstance(msg, Accepted) and args.async_:
            if ctx.json:
                output.print_json({"request_id": msg.request_id, "job_id": msg.job_id})
            else:
                print(msg.request_id, flush=True)
                output.info(f"Managed job {msg.job_id} queued ({msg.ahead} ahead of it).\n"
                            f"  follow it:  skyctl jobs logs {msg.job_id}")
            return OK
        if isinstance(msg, Result):
            if msg.error is not None:
                output.error(msg.error.message, msg.error.hint)
                return exit_code(msg.error.code)
            job = msgspec.convert(msg.value, protocol.ManagedJobRecord)
            break
    if job is None:
        return FAILED
    output.info(f"Managed job {job.job_id} ({job.name}) submitted; it runs on its own "
                f"cluster {job.cluster} on {job.infra}.")
    code = OK
    if args.detach_run:
        output.info(f"  follow it:  skyctl jobs logs {job.job_id}")
    else:
        log = LogWriter(sys.stderr.buffer if ctx.json else None)
        code, final, _ = follow_managed(ctx, job.job_id, log=log)
        job = final or job
    if ctx.json:
        output.print_json(job)
    return code


def run_queue(ctx: Ctx, args: argparse.Namespace) -> int:
    jobs = ctx.call(protocol.JobsQueue(job_ids=args.job_ids, all_users=args.all_users,
                                       skip_finished=args.skip_finished, limit=args.limit))
    if ctx.json:
        output.print_json(jobs)
        return OK
    if not jobs:
        output.info("No managed jobs." if not args.skip_finished else "No unfinished managed jobs.")
        return OK
    head = ["ID", "NAME"] + (["USER"] if args.all_users else []) + \
        ["SUBMITTED", "TOT. DURATION", "JOB DURATION", "#RECOVERIES", "STATUS"]
    if args.all:
        head += ["INFRA", "RESOURCES", "CLUSTER", "RESTARTS", "REASON"]
    rows = []
    for j in jobs:
        row = [j.job_id, j.name] + ([j.user] if args.all_users else []) + \
            [output.age(j.submitted_at), output.duration(j.submitted_at, j.ended_at),
             output.duration(j.run_started_at, j.ended_at), j.recoveries,
             output.status_text(j.status)]
        if args.all:
            row += [j.infra, j.resources or "-", j.cluster,
                    f"{j.restarts_on_errors}/{j.max_restarts_on_errors}", j.reason or "-"]
        rows.append(row)
    output.table(head, rows)
    if args.limit and len(jobs) == args.limit:
        output.info(f"(the newest {args.limit}; --limit 0 shows all)")
    return OK


def _named(ctx: Ctx, name: str, unfinished: bool) -> list[int]:
    jobs = ctx.call(protocol.JobsQueue(skip_finished=unfinished))
    ids = [j.job_id for j in jobs if j.name == name]
    if not ids:
        raise UsageError(f"no {'unfinished ' if unfinished else ''}managed job named {name!r}")
    return ids


def run_logs(ctx: Ctx, args: argparse.Namespace) -> int:
    wanted = args.job_id
    if args.name is not None:
        if wanted is not None:
            raise UsageError("give either a job id or -n/--name")
        wanted = _named(ctx, args.name, unfinished=False)[0]      # newest first
    log = LogWriter(sys.stderr.buffer if ctx.json else None)
    code, job, _ = follow_managed(ctx, wanted, follow=not args.no_follow,
                                  controller=args.controller, log=log)
    if ctx.json and job is not None:
        output.print_json(job)
    return code


def _unfinished(ctx: Ctx, ids: list[int]) -> list[int]:
    """`ids` less the jobs that have ended: cancelling those changes nothing, said so."""
    admin = bool(ctx.conn.welcome and ctx.conn.welcome.admin)
    ended = {j.job_id: j.status for j in ctx.call(protocol.JobsQueue(job_ids=ids, all_users=admin))
             if j.status in protocol.MANAGED_FINISHED}
    for n, status in ended.items():
        output.info(f"Managed job {n} already finished ({status}); nothing to cancel.")
    return [n for n in dict.fromkeys(ids) if n not in ended]


def run_cancel(ctx: Ctx, args: argparse.Namespace) -> int:
    ids = list(args.job_ids)
    if args.name is not None:
        ids += _named(ctx, args.name, unfinished=True)
    every = args.all or args.all_users
    if not (ids or every):
        raise UsageError("name the managed jobs to cancel (ids or -n NAME), or pass -a/--all")
    done: list[int] = []
    for attempt in (1, 2):
        ids = _unfinished(ctx, ids) if ids else ids
        if not ids and not every:
            break
        try:
            done = ctx.call(protocol.JobsCancel(job_ids=ids, all=args.all, all_users=args.all_users))
            break
        except ServerError as e:      # one ended since we looked: look again, once
            if e.error.code != protocol.ErrorCode.CONFLICT or attempt == 2:
                raise
    if ctx.json:
        output.print_json(done)
    elif done:
        output.info(f"Cancelling managed job(s) {', '.join(map(str, done))}.")
    elif every:
        output.info("No unfinished managed job to cancel.")
    return OK
