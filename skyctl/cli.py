"""skyctl: the command table (argparse), shared by the one-shot CLI and the shell.

Commands mirror SkyPilot's CLI, so existing scripts port over. Every request runs
synchronously (follow its log, then print its result) or with --async (print the id).
"""

from __future__ import annotations

import argparse
import sys

import msgspec

# argparse looks up a translation for every help string it is given, and each lookup stats
# the locale directories (no catalogue exists, so nothing is cached): ~1.5 ms of every
# start. Python ships no translations of argparse's messages; skyctl's own are English.
argparse._ = lambda text: text  # type: ignore[attr-defined]
argparse.ngettext = lambda one, many, n: one if n == 1 else many  # type: ignore[attr-defined]

from skyctl import output
from skyctl.connection import Connection, ServerError, Unreachable, reconnect
from skyctl.endpoint import EndpointError, resolve
from skyd import protocol
from skyd.protocol import Accepted, Chunk, End, Error, Notice, Result, Status

EPILOG = """exit codes: 0 ok, 1 request or job failed, 2 usage (bad arguments, task, name or id),
3 cancelled, 4 cannot reach the daemon, 5 permission denied, 130 detached with Ctrl-C"""


class Ctx:
    """One command's connection and output choices."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.path, self.source = resolve(getattr(args, "host", None))
        self.conn = Connection(self.path, self.source).connect()
        self.json = getattr(args, "json", False)

    def call(self, op: protocol.Op):
        return self.conn.call(op)


# ---- following a request or a job ----------------------------------------------------------

def _write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def follow_request(ctx: Ctx, op: protocol.Op, wait: bool) -> tuple[int, Result | None]:
    """Submit `op`; print its id (--async) or follow its log to its result. Survives a
    daemon restart by reconnecting and resuming from the last byte seen."""
    rid, offset = None, 0
    frames = ctx.conn.submit(op, wait)
    while True:
        try:
            for msg in frames:
                if isinstance(msg, Accepted):
                    rid = msg.request_id
                    if not wait:
                        print(rid)
                        return output.OK, None
                    ahead = f", {msg.ahead} ahead in the {msg.queue.value} queue" if msg.ahead else ""
                    output.info(f"Request {rid} accepted{ahead}.")
                elif isinstance(msg, Chunk):
                    offset += len(msg.data)
                    _write(msg.data)
                elif isinstance(msg, Notice):
                    output.info(msg.message)
                elif isinstance(msg, End):
                    offset = msg.offset
                elif isinstance(msg, Error):
                    output.error(msg.message, msg.hint)
                    return output.exit_code_for(msg.code), None
                elif isinstance(msg, Result):
                    return _result_code(msg), msg
            return output.FAILED, None
        except KeyboardInterrupt:
            if rid:
                output.info(f"\nDetached; request {rid} keeps running.\n"
                            f"  follow it:  skyctl api logs {rid}\n"
                            f"  cancel it:  skyctl api cancel {rid}")
            return output.DETACHED, None
        except (ConnectionError, OSError):
            if rid is None:
                raise Unreachable("the daemon closed the connection before accepting the request")
            output.info("Lost the connection to skyd; reconnecting...")
            ctx.conn.close()
            ctx.conn = reconnect(ctx.path, ctx.source)
            output.info(f"Reconnected; following request {rid} again.")
            frames = ctx.conn.submit(protocol.ApiLogs(request_id=rid, follow=True, offset=offset))


def _result_code(msg: Result) -> int:
    if msg.status is Status.SUCCEEDED:
        return output.OK
    if msg.status is Status.CANCELLED:
        output.error(f"request {msg.request_id} was cancelled")
        return output.CANCELLED
    if msg.error is not None:
        output.error(msg.error.message, msg.error.hint)
        return output.FAILED if msg.error.code is protocol.ErrorCode.FAILED \
            else output.exit_code_for(msg.error.code)
    if msg.status is Status.FAILED:
        output.error(f"request {msg.request_id} failed")
        return output.FAILED
    return output.OK


def follow_stream(ctx: Ctx, make_op, finish, detached: str) -> int:
    """Follow a log stream (a job's output) to its final record; `make_op(offset)` asks
    for it from a byte offset, so a daemon restart resumes where it was."""
    offset = 0
    while True:
        try:
            for msg in ctx.conn.submit(make_op(offset)):
                if isinstance(msg, Chunk):
                    offset += len(msg.data)
                    _write(msg.data)
                elif isinstance(msg, Notice):
                    output.info(msg.message)
                elif isinstance(msg, Error):
                    output.error(msg.message, msg.hint)
                    return output.exit_code_for(msg.code)
                elif isinstance(msg, Result):
                    return finish(msg.value)
            return output.FAILED
        except KeyboardInterrupt:
            output.info(detached)
            return output.DETACHED
        except (ConnectionError, OSError):
            output.info("Lost the connection to skyd; reconnecting...")
            ctx.conn.close()
            ctx.conn = reconnect(ctx.path, ctx.source)


def follow_job(ctx: Ctx, cluster: str, job_id: int | None, follow: bool = True) -> int:
    ref = f"{cluster} {job_id or ''}".rstrip()
    return follow_stream(
        ctx, lambda offset: protocol.JobLogs(cluster=cluster, job_id=job_id, follow=follow,
                                             offset=offset),
        lambda value: _job_code(msgspec.convert(value, protocol.JobRecord), follow),
        f"\nStopped following; the job keeps running.\n  follow it:  skyctl logs {ref}"
        f"\n  cancel it:  skyctl cancel {ref}")


def _job_code(job: protocol.JobRecord, followed: bool) -> int:
    if not followed or job.status not in protocol.JOB_FINISHED:
        return output.OK
    code = f" (exit status {job.exit_code})" if job.exit_code not in (None, 0) else ""
    output.info(f"Job {job.job_id} on {job.cluster} finished: {job.status}{code}.")
    return {"SUCCEEDED": output.OK, "CANCELLED": output.CANCELLED}.get(job.status, output.FAILED)


# ---- commands ------------------------------------------------------------------------------

def _task(args: argparse.Namespace):
    from skyctl import taskfile
    overrides = {"cpus": args.cpus, "memory": args.memory, "infra": args.infra,
                 "num_nodes": args.num_nodes, "workdir": args.workdir, "name": args.name,
                 "envs": taskfile.parse_env(args.env)}
    return taskfile.load(args.entrypoint, overrides)


def cmd_launch(ctx: Ctx, args: argparse.Namespace) -> int:
    task = _task(args)
    op: protocol.Launch | protocol.Exec
    if args.command == "launch":
        if args.down and args.idle_minutes_to_autostop is None:
            args.idle_minutes_to_autostop = 0.0   # as SkyPilot: down once all jobs finish
        op = protocol.Launch(task=task, cluster=args.cluster,
                             idle_minutes_to_autostop=args.idle_minutes_to_autostop,
                             down=args.down, timeout=args.timeout)
    else:
        op = protocol.Exec(task=task, cluster=args.cluster, timeout=args.timeout)
    code, result = follow_request(ctx, op, wait=not args.async_)
    if code != output.OK or result is None:
        return code
    launched = msgspec.convert(result.value, protocol.LaunchResult)
    if launched.job_id is None:
        output.info(f"Cluster {launched.cluster} is ready (the task has no run command).")
        return output.OK
    if args.detach_run:
        output.info(f"Job {launched.job_id} submitted to {launched.cluster}.\n"
                    f"  follow it:  skyctl logs {launched.cluster} {launched.job_id}")
        return output.OK
    return follow_job(ctx, launched.cluster, launched.job_id)


def cmd_lifecycle(ctx: Ctx, args: argparse.Namespace) -> int:
    make = {"stop": protocol.Stop, "start": protocol.Start, "down": protocol.Down}[args.command]
    worst = output.OK
    for name in args.clusters:
        code, _ = follow_request(ctx, make(cluster=name), wait=not args.async_)
        worst = worst or code
    return worst


def cmd_autostop(ctx: Ctx, args: argparse.Namespace) -> int:
    minutes = -1.0 if args.cancel else args.idle_minutes
    for name in args.clusters:
        rec = ctx.call(protocol.Autostop(cluster=name, idle_minutes=minutes, down=args.down))
        if ctx.json:
            output.print_json(rec)
        elif minutes < 0:
            print(f"Autostop cancelled for {name}.")
        else:
            what = "torn down" if args.down else "stopped"
            print(f"{name} will be {what} after {minutes:g} idle minute(s).")
    return output.OK


def cmd_status(ctx: Ctx, args: argparse.Namespace) -> int:
    clusters = ctx.call(protocol.ClusterStatus(clusters=args.clusters, all_users=args.all_users))
    if ctx.json:
        output.print_json(clusters)
        return output.OK
    if not clusters:
        print("No existing clusters.")
        return output.OK
    output.table(["NAME", "INFRA", "NODES", "RESOURCES", "STATUS", "USER", "LAUNCHED"],
                 [[c.name, c.infra, c.num_nodes, c.resources or "-", output.status_text(c.status),
                   c.user, output.age(c.launched_at)] for c in clusters])
    return output.OK


def cmd_queue(ctx: Ctx, args: argparse.Namespace) -> int:
    jobs = ctx.call(protocol.JobQueue(cluster=args.cluster, skip_finished=args.skip_finished))
    if ctx.json:
        output.print_json(jobs)
        return output.OK
    print(f"Job queue of cluster {args.cluster}")
    output.table(["ID", "NAME", "USER", "SUBMITTED", "STARTED", "DURATION", "STATUS"],
                 [[j.job_id, j.name, j.user, output.age(j.submitted_at), output.age(j.started_at),
                   output.duration(j.started_at, j.ended_at), output.status_text(j.status)]
                  for j in jobs])
    return output.OK


def cmd_logs(ctx: Ctx, args: argparse.Namespace) -> int:
    return follow_job(ctx, args.cluster, args.job_id, follow=not args.no_follow)


def cmd_cancel(ctx: Ctx, args: argparse.Namespace) -> int:
    if not args.all and not args.job_ids:
        output.error("name the jobs to cancel, or pass --all")
        return output.USAGE
    done = ctx.call(protocol.CancelJobs(cluster=args.cluster, job_ids=args.job_ids, all=args.all))
    if ctx.json:
        output.print_json(done)
    elif done:
        print(f"Cancelled job(s) {', '.join(map(str, done))} on {args.cluster}.")
    else:
        print("No running or pending job to cancel.")
    return output.OK


def cmd_infra(ctx: Ctx, args: argparse.Namespace) -> int:
    hosts = ctx.call(protocol.InfraStatus(pools=args.pools))
    if ctx.json:
        output.print_json(hosts)
        return output.OK
    if not hosts:
        print("No ssh node pools (the daemon reads them from <state-dir>/ssh_node_pools.yaml).")
        return output.OK
    output.table(["POOL", "HOST", "USER", "REACHABLE", "CPUS", "MEMORY", "CLUSTER"],
                 [[h.pool, f"{h.ip}:{h.port}",
                   f"{h.user} (shared)" if h.shared_login else h.user,
                   output.paint("yes", "green") if h.reachable else
                   output.paint(f"no: {h.error}", "red"),
                   h.cpus if h.cpus is not None else "-",
                   f"{h.memory_bytes / 2**30:.1f} GiB" if h.memory_bytes else "-",
                   h.cluster or "-"] for h in hosts])
    for pool in dict.fromkeys(h.pool for h in hosts if h.shared_login):
        print(output.paint(f"pool {pool}: shared login: users of this pool are not isolated "
                           "from each other (each can read and signal the others' work)",
                           "yellow"))
    return output.OK if all(h.reachable for h in hosts) else output.FAILED


# ---- managed jobs --------------------------------------------------------------------------

MANAGED_EXIT = {"SUCCEEDED": output.OK, "CANCELLED": output.CANCELLED}


def follow_managed(ctx: Ctx, job_id: int | None, follow: bool = True,
                   controller: bool = False) -> int:
    def finish(value) -> int:
        job = msgspec.convert(value, protocol.ManagedJobRecord)
        if not follow or controller:
            return output.OK
        why = f": {job.reason}" if job.reason and job.status != "SUCCEEDED" else ""
        output.info(f"Managed job {job.job_id} finished: {job.status}{why}.")
        return MANAGED_EXIT.get(job.status, output.FAILED)
    ref = "" if job_id is None else f" {job_id}"
    return follow_stream(
        ctx, lambda offset: protocol.JobsLogs(job_id=job_id, controller=controller,
                                              follow=follow, offset=offset), finish,
        f"\nStopped following; the managed job keeps running.\n"
        f"  follow it:  skyctl jobs logs{ref}\n  cancel it:  skyctl jobs cancel{ref}")


def cmd_jobs_launch(ctx: Ctx, args: argparse.Namespace) -> int:
    op = protocol.JobsLaunch(task=_task(args), name=args.name)
    job = None
    for msg in ctx.conn.submit(op, wait=not args.async_):
        if isinstance(msg, Error):
            output.error(msg.message, msg.hint)
            return output.exit_code_for(msg.code)
        if isinstance(msg, Accepted) and args.async_:
            if ctx.json:
                output.print_json({"request_id": msg.request_id, "job_id": msg.job_id})
            else:
                print(msg.request_id)
                output.info(f"Managed job {msg.job_id} queued ({msg.ahead} ahead of it).\n"
                            f"  follow it:  skyctl jobs logs {msg.job_id}")
            return output.OK
        if isinstance(msg, Result):
            job = msgspec.convert(msg.value, protocol.ManagedJobRecord)
            break
    if job is None:
        return output.FAILED
    if ctx.json:
        output.print_json(job)
        return output.OK
    output.info(f"Managed job {job.job_id} ({job.name}) submitted; it runs on its own "
                f"cluster {job.cluster} on {job.infra}.")
    if args.detach_run:
        output.info(f"  follow it:  skyctl jobs logs {job.job_id}")
        return output.OK
    return follow_managed(ctx, job.job_id)


def cmd_jobs_queue(ctx: Ctx, args: argparse.Namespace) -> int:
    jobs = ctx.call(protocol.JobsQueue(job_ids=args.job_ids, all_users=args.all_users,
                                       skip_finished=args.skip_finished, limit=args.limit))
    if ctx.json:
        output.print_json(jobs)
        return output.OK
    if not jobs:
        print("No managed jobs." if not args.skip_finished else "No unfinished managed jobs.")
        return output.OK
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
    return output.OK


def cmd_jobs_logs(ctx: Ctx, args: argparse.Namespace) -> int:
    return follow_managed(ctx, args.job_id, follow=not args.no_follow, controller=args.controller)


def cmd_jobs_cancel(ctx: Ctx, args: argparse.Namespace) -> int:
    if not (args.job_ids or args.all or args.all_users):
        output.error("name the managed jobs to cancel, or pass --all")
        return output.USAGE
    done = ctx.call(protocol.JobsCancel(job_ids=args.job_ids, all=args.all,
                                        all_users=args.all_users))
    if ctx.json:
        output.print_json(done)
    elif done:
        print(f"Cancelling managed job(s) {', '.join(map(str, done))}.")
    else:
        print("No unfinished managed job to cancel.")
    return output.OK


def cmd_api_status(ctx: Ctx, args: argparse.Namespace) -> int:
    reqs = ctx.call(protocol.ApiStatus(request_ids=args.request_ids, all_statuses=args.all,
                                       all_users=args.all_users, limit=args.limit))
    if ctx.json:
        output.print_json(reqs)
        return output.OK
    if not reqs:
        print("No requests." if args.all else "No pending or running requests "
              "(skyctl api status -a shows finished ones).")
        return output.OK
    output.table(["ID", "USER", "NAME", "CLUSTER", "CREATED", "STATUS"],
                 [[r.id, r.user, r.name, r.cluster or "-", output.age(r.created_at),
                   output.status_text(r.status.value)] for r in reqs])
    return output.OK


def cmd_api_logs(ctx: Ctx, args: argparse.Namespace) -> int:
    code, _ = follow_request(ctx, protocol.ApiLogs(request_id=args.request_id,
                                                   follow=not args.no_follow), wait=True)
    return code


def cmd_api_cancel(ctx: Ctx, args: argparse.Namespace) -> int:
    if not (args.request_ids or args.all or args.all_users):
        output.error("name the requests to cancel, or pass --all")
        return output.USAGE
    done = ctx.call(protocol.ApiCancel(request_ids=args.request_ids, all=args.all,
                                       all_users=args.all_users))
    if ctx.json:
        output.print_json(done)
    elif done:
        for rid in done:
            print(f"Cancelled {rid}")
    else:
        print("Nothing to cancel.")
    return output.OK


def cmd_api_info(ctx: Ctx, args: argparse.Namespace) -> int:
    info = ctx.call(protocol.ApiInfo())
    if ctx.json:
        output.print_json(info)
        return output.OK
    from skyd import __version__
    rows = [("server", f"skyd {info.version} (protocol v{info.protocol}, pid {info.pid})"),
            ("client", f"skyctl {__version__} (protocol v{protocol.PROTOCOL_VERSION})"),
            ("endpoint", f"unix://{ctx.path} ({ctx.source})"),
            ("user", f"{info.user} (uid {info.uid}{', admin' if info.admin else ''})"),
            ("state", info.state_dir),
            ("long queue", f"{info.long_running}/{info.long_slots} running, {info.long_pending} pending"),
            ("short queue", f"{info.short_running}/{info.short_slots} running, "
                            f"{info.short_pending} pending"),
            ("sized from", info.slots_source),
            ("up since", output.age(info.started_at))]
    lim = info.limits
    if lim is not None:
        def cap(n: int, unit: str = "") -> str:
            return "no cap" if not n else f"{n:,}{unit}"

        def secs(t: float) -> str:
            return "none" if not t else f"{t:g} s"

        def size(n: int) -> str:
            for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
                if n and n % k == 0:
                    return f"{n // k} {unit}"
            return cap(n, " bytes")
        rows += [("limits", (f"per user: {cap(lim.connections_per_user)} connections, "
                             f"{cap(lim.user_long_slots)} long slots, "
                             f"{cap(lim.user_pending)} waiting long requests (operators: none)")),
                 ("", (f"long request time limit: {secs(lim.long_timeout)}; "
                       f"request log: {size(lim.request_log_bytes)}; "
                       f"job log: {size(lim.job_log_bytes)} per node")),
                 ("", (f"handshake: {secs(lim.handshake_timeout)}, frames up to "
                       f"{size(lim.handshake_max_frame)}, then {size(lim.max_frame)}; "
                       f"in flight: {size(lim.inflight_bytes)}"))]
    for key, value in rows:
        print(f"{key + ':' if key else '':13}{value}")
    return output.OK


# ---- the table of commands ---------------------------------------------------------------------

def _job_id(text: str) -> int:
    """A job id as argparse reads it: within what the protocol carries."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= protocol.MAX_WIRE_INT:
        raise argparse.ArgumentTypeError(f"{text} is not a job id (1 to {protocol.MAX_WIRE_INT})")
    return n


def _common(p: argparse.ArgumentParser, json: bool = True) -> None:
    p.add_argument("--host", help="server address: unix:///path/to/skyd.sock "
                                  "(default: SKYD_HOST, ~/.config/skyctl/config.toml, then the "
                                  "per-user or system socket)")
    if json:
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _task_args(p: argparse.ArgumentParser, task_required: bool) -> None:
    p.add_argument("entrypoint", nargs=None if task_required else "?",
                   help="task YAML file, or a command to run")
    p.add_argument("--async", dest="async_", action="store_true",
                   help="print the request id and return at once")
    p.add_argument("-d", "--detach-run", action="store_true",
                   help="return once the job has started, without following its output")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (accepted for SkyPilot "
                                                            "compatibility; skyctl never asks)")
    p.add_argument("-n", "--name", help="task name (overrides the YAML)")
    p.add_argument("--env", action="append", metavar="KEY[=VALUE]", help="environment variable "
                                                                          "for setup and run")
    p.add_argument("--workdir", help="directory to sync to the nodes (overrides the YAML)")
    p.add_argument("--num-nodes", type=int, help="number of nodes (overrides the YAML)")
    p.add_argument("--cpus", help="CPUs per node, e.g. 4 or 4+ (overrides the YAML)")
    p.add_argument("--memory", help="memory per node in GiB, e.g. 8+ (overrides the YAML)")
    p.add_argument("--infra", help="where to run: local (default) or ssh/POOL")
    _common(p, json=False)


def _timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="fail the request if provisioning and setup take longer than this "
                        "(default: the server's, see skyctl api info)")


def _launch_args(p: argparse.ArgumentParser) -> None:
    _task_args(p, task_required=False)
    _timeout_arg(p)
    p.add_argument("-c", "--cluster", help="cluster name (default: a generated one)")
    p.add_argument("-i", "--idle-minutes-to-autostop", type=float, metavar="MINUTES",
                   help="stop the cluster after this many idle minutes")
    p.add_argument("--down", action="store_true",
                   help="with autostop: tear the cluster down instead of stopping it")
    p.set_defaults(func=cmd_launch)


def _exec_args(p: argparse.ArgumentParser) -> None:
    _task_args(p, task_required=True)
    _timeout_arg(p)
    p.add_argument("-c", "--cluster", required=True, help="the cluster to run on")
    p.set_defaults(func=cmd_launch)


def _lifecycle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("clusters", nargs="+", metavar="CLUSTER")
    p.add_argument("--async", dest="async_", action="store_true",
                   help="print the request id and return at once")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (skyctl never asks)")
    _common(p, json=False)
    p.set_defaults(func=cmd_lifecycle)


def _autostop_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("clusters", nargs="+", metavar="CLUSTER")
    p.add_argument("-i", "--idle-minutes", type=float, default=5.0,
                   help="idle minutes before stopping (default 5)")
    p.add_argument("--down", action="store_true", help="tear down instead of stopping")
    p.add_argument("--cancel", action="store_true", help="cancel autostop")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (skyctl never asks)")
    _common(p)
    p.set_defaults(func=cmd_autostop)


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("clusters", nargs="*", metavar="CLUSTER")
    p.add_argument("-u", "--all-users", action="store_true", help="every user's clusters (admins only)")
    _common(p)
    p.set_defaults(func=cmd_status)


def _queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("cluster")
    p.add_argument("-s", "--skip-finished", action="store_true", help="only pending and running")
    _common(p)
    p.set_defaults(func=cmd_queue)


def _logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("cluster")
    p.add_argument("job_id", nargs="?", type=_job_id, help="job id (default: the latest)")
    p.add_argument("--no-follow", action="store_true", help="print what is there and return")
    _common(p, json=False)
    p.set_defaults(func=cmd_logs)


def _cancel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("cluster")
    p.add_argument("job_ids", nargs="*", type=_job_id, metavar="JOB_ID")
    p.add_argument("-a", "--all", action="store_true", help="every pending or running job")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (skyctl never asks)")
    _common(p)
    p.set_defaults(func=cmd_cancel)


def _infra_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("pools", nargs="*", metavar="POOL")
    _common(p)
    p.set_defaults(func=cmd_infra)


def _api_args(api_parser: argparse.ArgumentParser) -> None:
    api = api_parser.add_subparsers(dest="api_command", required=True, metavar="API_COMMAND")
    p = api.add_parser("status", help="list requests (pending and running; -a for all)")
    p.add_argument("request_ids", nargs="*", metavar="ID", help="ids or unique prefixes")
    p.add_argument("-a", "--all", action="store_true", help="include finished requests")
    p.add_argument("-u", "--all-users", action="store_true", help="every user's requests (admins only)")
    p.add_argument("-l", "--limit", type=int, default=50, help="at most this many (default 50)")
    _common(p)
    p.set_defaults(func=cmd_api_status)

    p = api.add_parser("logs", help="follow a request's log, then print its result")
    p.add_argument("request_id", metavar="ID")
    p.add_argument("--no-follow", action="store_true", help="print what is there and return")
    _common(p, json=False)
    p.set_defaults(func=cmd_api_logs)

    p = api.add_parser("cancel", help="cancel requests (pending ones never start)")
    p.add_argument("request_ids", nargs="*", metavar="ID")
    p.add_argument("-a", "--all", action="store_true", help="all of your pending and running requests")
    p.add_argument("-u", "--all-users", action="store_true", help="everyone's (admins only)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (skyctl never asks)")
    _common(p)
    p.set_defaults(func=cmd_api_cancel)

    p = api.add_parser("info", help="server and client versions, endpoint, queues")
    _common(p)
    p.set_defaults(func=cmd_api_info)


def _jobs_args(jobs_parser: argparse.ArgumentParser) -> None:
    jobs = jobs_parser.add_subparsers(dest="jobs_command", required=True, metavar="JOBS_COMMAND")
    p = jobs.add_parser("launch", help="queue a managed job: its own cluster, relaunched if "
                                       "the cluster is lost, torn down at the end",
                        description="Queue a managed job and follow its output (--async: print "
                                    "the request id and return). The job gets its own cluster, "
                                    "is relaunched when the cluster or a node is lost, retried "
                                    "after its own failures up to resources.job_recovery."
                                    "max_restarts_on_errors, and its cluster is torn down at "
                                    "the end, whatever the outcome.")
    _task_args(p, task_required=True)
    p.set_defaults(func=cmd_jobs_launch)
    p.add_argument("--json", action="store_true", help="print the job (or, with --async, "
                                                       "the request and job ids) as JSON")

    p = jobs.add_parser("queue", help="list managed jobs (newest first)")
    p.add_argument("job_ids", nargs="*", type=_job_id, metavar="ID")
    p.add_argument("-a", "--all", action="store_true", help="show every column (infra, "
                                                            "cluster, restarts, reason)")
    p.add_argument("-u", "--all-users", action="store_true", help="every user's jobs (admins only)")
    p.add_argument("-s", "--skip-finished", action="store_true", help="only unfinished jobs")
    p.add_argument("-l", "--limit", type=int, default=0, help="at most this many (default: all)")
    _common(p)
    p.set_defaults(func=cmd_jobs_queue)

    p = jobs.add_parser("logs", help="follow a managed job's output (all its attempts)")
    p.add_argument("job_id", nargs="?", type=_job_id, metavar="ID", help="default: your latest")
    p.add_argument("--no-follow", action="store_true", help="print what is there and return")
    p.add_argument("--controller", action="store_true",
                   help="the controller's log: state changes, launch and teardown output")
    _common(p, json=False)
    p.set_defaults(func=cmd_jobs_logs)

    p = jobs.add_parser("cancel", help="cancel managed jobs (queued ones never start)")
    p.add_argument("job_ids", nargs="*", type=_job_id, metavar="ID")
    p.add_argument("-a", "--all", action="store_true", help="all of your unfinished jobs")
    p.add_argument("-u", "--all-users", action="store_true", help="everyone's (admins only)")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (skyctl never asks)")
    _common(p)
    p.set_defaults(func=cmd_jobs_cancel)


def _shell_args(p: argparse.ArgumentParser) -> None:
    _common(p, json=False)
    p.set_defaults(func=None)


# name, help, description, arguments, aliases: one row per command.
COMMANDS = [
    ("launch", "launch a task on a (new or existing) cluster",
     "Provision or reuse a cluster, sync the workdir, run setup, and run the task as a job, "
     "following its output.", _launch_args, ()),
    ("exec", "run a task as a new job on an existing cluster (no setup)", None, _exec_args, ()),
    ("stop", "stop clusters (jobs are killed, nodes kept)", None, _lifecycle_args, ()),
    ("start", "start stopped clusters", None, _lifecycle_args, ()),
    ("down", "tear clusters down (everything removed)", None, _lifecycle_args, ()),
    ("autostop", "stop or tear down clusters after an idle time",
     "A cluster with no job and no request for --idle-minutes is stopped (or torn down with "
     "--down) by the server.", _autostop_args, ()),
    ("status", "list clusters", None, _status_args, ()),
    ("queue", "list a cluster's jobs", None, _queue_args, ()),
    ("logs", "print or follow a job's output", None, _logs_args, ()),
    ("cancel", "cancel jobs on a cluster", None, _cancel_args, ()),
    ("infra", "ssh node pools: hosts, reachability, CPUs, memory",
     "Probe every host of the ssh node pools (exit 1 if any does not answer).", _infra_args,
     ("check",)),
    ("jobs", "managed jobs: launch, queue, logs, cancel", None, _jobs_args, ()),
    ("api", "inspect and control requests", None, _api_args, ()),
    ("shell", "an interactive shell with completion and live queue depths", None, _shell_args,
     ()),
]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command table. With `only`, the other commands get their name and help but no
    arguments: a one-shot skyctl pays for the command it runs, not for all of them."""
    parser = argparse.ArgumentParser(prog="skyctl", description="skyctl: talk to the skyd "
                                     "request server.", epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from skyd import __version__
    parser.add_argument("--version", action="version", version=f"skyctl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text, description, add_arguments, aliases in COMMANDS:
        p = sub.add_parser(name, help=text, aliases=list(aliases),
                           description=description or text[0].upper() + text[1:] + ".")
        if only is None or only == name or only in aliases:
            add_arguments(p)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command word of a command line, if it names one (else the full table is built)."""
    for word in argv:
        if not word.startswith("-"):
            known = any(word == c[0] or word in c[4] for c in COMMANDS)
            return word if known else None
    return None


def run(args: argparse.Namespace) -> int:
    from skyd.taskspec import TaskError
    try:
        if args.command == "shell":
            from skyctl.shell import main as shell_main
            return shell_main(args)
        ctx = Ctx(args)
        try:
            return args.func(ctx, args)
        finally:
            ctx.conn.close()
    except TaskError as e:
        output.error(f"invalid task: {e}")
        return output.USAGE
    except EndpointError as e:
        output.error(str(e))
        return output.USAGE
    except Unreachable as e:
        output.error(str(e))
        return output.UNREACHABLE
    except ServerError as e:
        output.error(e.error.message, e.error.hint)
        return output.exit_code_for(e.error.code)
    except BrokenPipeError:
        return output.OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=_command_in(argv)).parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        return output.DETACHED


if __name__ == "__main__":
    sys.exit(main())
