"""Jobs on clusters: `queue`, `logs`, `cancel`, in SkyPilot's forms.

JSON (--json): queue: [job record] (each names its cluster); logs: the job's record (its
output then goes to stderr), with --sync-down {"JOB_ID": "local path"}; cancel:
[{"cluster", "job_id"}] of the jobs cancelled.
"""

from __future__ import annotations

import argparse
import os
import sys

from skyctl import output
from skyctl.commands.common import common, completes, is_pattern, job_id, resolve_clusters, yes
from skyctl.context import Ctx
from skyctl.exits import OK, UsageError, exit_code
from skyctl.follow import follow_job
from skyctl.output import LogWriter
from skyd import protocol


def add_queue(p: argparse.ArgumentParser) -> None:
    completes(p.add_argument("clusters", nargs="*", metavar="CLUSTER",
                             help="names or glob patterns (default: all your clusters)"), "cluster")
    p.add_argument("-s", "--skip-finished", action="store_true", help="only pending and running jobs")
    p.add_argument("-u", "-a", "--all-users", action="store_true",
                   help="without CLUSTER: every user's clusters (admins only)")
    common(p)
    p.set_defaults(func=run_queue)


def add_logs(p: argparse.ArgumentParser) -> None:
    completes(p.add_argument("cluster", metavar="CLUSTER"), "cluster")
    completes(p.add_argument("job_ids", nargs="*", type=job_id, metavar="JOB_ID",
                             help="default: the latest job (several only with --sync-down)"), "job")
    p.add_argument("--status", action="store_true",
                   help="print the job's status and exit with its code (0 succeeded, 1 failed, "
                        "3 cancelled, 6 not finished) instead of its output")
    p.add_argument("--follow", dest="no_follow", action="store_false", default=False,
                   help="follow the output until the job ends (the default)")
    p.add_argument("--no-follow", action="store_true", help="print what is there and return")
    p.add_argument("--tail", type=int, default=0, metavar="N",
                   help="start with the last N lines (default 0: all of it)")
    p.add_argument("-s", "--sync-down", action="store_true",
                   help="save the jobs' logs under ~/sky_logs/CLUSTER/ and print the paths")
    common(p, json_help="print the job's record as JSON (its output goes to stderr)")
    p.set_defaults(func=run_logs)


def add_cancel(p: argparse.ArgumentParser) -> None:
    completes(p.add_argument("cluster", metavar="CLUSTER", help="a name or a glob pattern"),
              "cluster")
    completes(p.add_argument("job_ids", nargs="*", type=job_id, metavar="JOB_ID",
                             help="default: the latest unfinished job"), "job")
    p.add_argument("-a", "--all", action="store_true", help="every pending or running job")
    p.add_argument("-u", "--all-users", action="store_true",
                   help="every user's jobs on the cluster (the same as -a: a cluster has one owner)")
    yes(p)
    common(p)
    p.set_defaults(func=run_cancel)


ARGUMENTS = {"queue": add_queue, "logs": add_logs, "cancel": add_cancel}


def run_queue(ctx: Ctx, args: argparse.Namespace) -> int:
    if args.clusters:
        targets = resolve_clusters(ctx, args.clusters, all_users=args.all_users)
    else:
        targets = ctx.call(protocol.ClusterStatus(all_users=args.all_users))
    queues = {c.name: ctx.call(protocol.JobQueue(cluster=c.name, skip_finished=args.skip_finished))
              for c in targets}
    if ctx.json:
        output.print_json([j for jobs in queues.values() for j in jobs])
        return OK
    if not queues:
        output.info("No existing clusters.")
    for n, (name, jobs) in enumerate(queues.items()):
        print(("\n" if n else "") + f"Job queue of cluster {name}")
        output.table(["ID", "NAME", "USER", "SUBMITTED", "STARTED", "DURATION", "STATUS"],
                     [[j.job_id, j.name, j.user, output.age(j.submitted_at),
                       output.age(j.started_at), output.duration(j.started_at, j.ended_at),
                       output.status_text(j.status)] for j in jobs])
    return OK


def _job(ctx: Ctx, cluster: str, wanted: int | None) -> protocol.JobRecord | None:
    jobs = ctx.call(protocol.JobQueue(cluster=cluster))
    if wanted is None:
        return jobs[0] if jobs else None          # newest first
    return next((j for j in jobs if j.job_id == wanted), None)


def run_logs(ctx: Ctx, args: argparse.Namespace) -> int:
    if args.status and args.sync_down:
        raise UsageError("give either --status or --sync-down")
    if len(args.job_ids) > 1 and not args.sync_down:
        raise UsageError("several jobs' output cannot be followed at once; "
                         "-s/--sync-down saves each to a file")
    if args.sync_down:
        return _sync_down(ctx, args)
    wanted = args.job_ids[0] if args.job_ids else None
    if args.status:
        job = _job(ctx, args.cluster, wanted)
        if job is None:
            raise UsageError(f"cluster {args.cluster!r} has " +
                             (f"no job {wanted}" if wanted else "no job yet"))
        if ctx.json:
            output.print_json(job)
        else:
            print(f"Job {job.job_id}: {job.status}", flush=True)
        return exit_code(job.status)
    log = LogWriter(sys.stderr.buffer if ctx.json else None)
    follow = not args.no_follow
    if args.tail > 0:
        code, job, offset = _tail(ctx, args.cluster, wanted, args.tail, log)
        if job is not None and follow and job.status not in protocol.JOB_FINISHED:
            code, job, _ = follow_job(ctx, args.cluster, job.job_id, True, log, offset)
    else:
        code, job, _ = follow_job(ctx, args.cluster, wanted, follow, log)
    if ctx.json and job is not None:
        output.print_json(job)
    return code


class _Kept:
    """The bytes of a log, kept to print their last lines (logs --tail)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass


def _tail(ctx: Ctx, cluster: str, wanted: int | None, lines: int, log: LogWriter):
    kept = _Kept()
    code, job, offset = follow_job(ctx, cluster, wanted, False, kept)
    body = bytes(kept.data)
    cut = len(body)
    for _ in range(lines + (1 if body.endswith(b"\n") else 0)):
        cut = body.rfind(b"\n", 0, cut)
        if cut < 0:
            break
    log.write(body[cut + 1:])
    return code, job, offset


def _sync_down(ctx: Ctx, args: argparse.Namespace) -> int:
    ids = args.job_ids or [None]
    saved: dict[str, str] = {}
    for wanted in ids:
        kept = _Kept()
        code, job, _ = follow_job(ctx, args.cluster, wanted, False, kept)
        if job is None:
            return code
        path = os.path.join(os.path.expanduser("~/sky_logs"), args.cluster, f"job-{job.job_id}.log")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(kept.data)
        saved[str(job.job_id)] = path
        if not ctx.json:
            print(f"Job {job.job_id} logs: {path}", flush=True)
    if ctx.json:
        output.print_json(saved)
    return OK


def run_cancel(ctx: Ctx, args: argparse.Namespace) -> int:
    every = args.all or args.all_users
    names = [c.name for c in resolve_clusters(ctx, [args.cluster])] \
        if is_pattern(args.cluster) else [args.cluster]
    if args.job_ids and len(names) > 1:
        raise UsageError(f"job ids name jobs of one cluster; {args.cluster!r} matches "
                         f"{', '.join(names)}")
    cancelled = []
    for name in names:
        ids = list(args.job_ids)
        if not ids and not every:
            latest = ctx.call(protocol.JobQueue(cluster=name, skip_finished=True))
            if not latest:
                output.info(f"No running or pending job to cancel on {name}.")
                continue
            ids = [latest[0].job_id]
            output.info(f"Cancelling the latest unfinished job of {name}: {ids[0]}.")
        done = ctx.call(protocol.CancelJobs(cluster=name, job_ids=ids, all=every))
        cancelled += [{"cluster": name, "job_id": n} for n in done]
        if done:
            output.info(f"Cancelled job(s) {', '.join(map(str, done))} on {name}.")
        elif every:
            output.info(f"No running or pending job to cancel on {name}.")
        left = [n for n in ids if n not in done]
        if left:
            states = {j.job_id: j.status for j in ctx.call(protocol.JobQueue(cluster=name))}
            for n in left:
                output.info(f"Job {n} on {name} already finished ({states.get(n, '?')}); "
                            "nothing to cancel.")
    if ctx.json:
        output.print_json(cancelled)
    return OK
