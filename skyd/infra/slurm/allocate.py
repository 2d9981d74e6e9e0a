"""A cluster's allocation, from the worker (which runs as the cluster's owner): found (an
interrupted launch left one) or submitted as the owner — their own account and fair share
— then waited for until it holds its nodes, and its nodes read.

Looking for one costs an squeue, so a launch looks only when an earlier attempt may have
submitted: the cluster's files say an earlier launch got that far (see
provisioner._shapes), or this one's sbatch got no answer. Its nodes' names come from the
allocation's marker and their addresses from an sinfo made while Slurm started it
(addresses.py): once it runs, the launch asks Slurm nothing.

The wait asks Slurm nothing of its own in the common case: the allocation's batch script
writes a file when it runs (scripts.holder_script), and what Slurm does with it meanwhile
(its pending reason, that it ended or will never start) comes from the daemon's board
(board.py), fed by the daemon's one squeue for every cluster. A request Slurm refuses or
will never start fails at once, clearly; a controller that restarts is waited for.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import threading
import time
from typing import Callable, Iterator, TypeVar

from skyd.infra.slurm import addresses, board, scripts
from skyd.infra.slurm.allocation import FORMAT, Allocation, job_name, memory_bytes, newest, \
    parse_lines, valid_job_id
from skyd.infra.slurm.commands import UNKNOWN_JOB, Slurm, SlurmUnreachable, failure, say
from skyd.protocol import ClusterRecord, ErrorCode, NodeInfo, SkydError
from skyd.taskspec import Task, parse_accelerators, parse_amount

T = TypeVar("T")

POLL = (2.0, 30.0)          # own squeue while the daemon's board is stale: first gap, longest
# How often a waiting launch looks at the marker file and the board (a stat each): every
# 10 ms for the first seconds (Slurm starts an allocation at once or at its next pass,
# ~1 s: the launch's latency), then every 0.1 s for a minute, then every half second.
MARKER_POLL = ((3.0, 0.01), (60.0, 0.1), (float("inf"), 0.5))
PATIENCE = 120.0            # seconds Slurm may not answer before the launch gives up

# sbatch's refusals that are the task's (or the settings') fault, and what to say.
REFUSALS = {
    "Invalid partition name": "Slurm has no {where}",
    "Requested node configuration is not available":
        "no node of {where} offers what the task asks for ({shape})",
    "Invalid generic resource": "Slurm does not know the GPUs (GRES) the task asks for ({shape})",
    "Invalid account": "Slurm refuses the account {account!r} for {where}",
    "Invalid qos": "Slurm refuses the QOS {qos!r}",
    "Memory specification can not be satisfied":
        "no node of {where} has the memory the task asks for ({shape})",
    "More processors requested than permitted":
        "the task asks for more CPUs than {where} permits ({shape})",
    "Node count specification invalid":
        "{where} cannot give the task's number of nodes ({shape})",
    "Requested time limit is invalid": "Slurm refuses the time limit {time_limit!r}",
}


class _Cancelled(BaseException):
    """The launch request was cancelled (SIGTERM) while the allocation waited."""


def allocation_shapes(task: Task) -> list[list[str]]:
    """What one node of the allocation asks for, as sbatch arguments: one shape per GPU
    option of the task, in its order of preference (GRES types are the site's names:
    the model as written, then in lower case — `H100:8` is tried as gpu:H100:8, then
    gpu:h100:8)."""
    shape = []
    cpus = parse_amount("cpus", task.resources.cpus)
    if cpus is not None:
        shape.append(f"--cpus-per-task={math.ceil(cpus.value)}")
    memory = parse_amount("memory", task.resources.memory)
    if memory is not None:
        shape.append(f"--mem={math.ceil(memory.value * 1024)}M")
    gres = []
    for ask in parse_accelerators(task.resources.accelerators):
        for model in dict.fromkeys((ask.model, ask.model.lower())):
            gres.append(f"--gres=gpu:{model}:{ask.count}")
    return [[*shape, g] for g in gres] or [shape]


class Allocator:
    """A user's allocations (the worker runs as them): find one, submit one, wait until it
    holds its nodes, read them."""

    def __init__(self, slurm: Slurm, uid: int, user: str):
        self.slurm, self.settings = slurm, slurm.settings
        self.uid, self.user = uid, user

    def allocate(self, cluster: ClusterRecord, d: str, state_dir: str,
                 shapes: list[list[str]], look: bool = True) -> list[NodeInfo]:
        """The cluster's nodes, once its allocation (found or submitted) holds them.
        `look`: whether an allocation of the cluster may be there already (else the first
        attempt submits without looking)."""
        looks = itertools.chain([look], itertools.repeat(True))
        with _cancellable():
            try:
                # Again while the controller does not answer (it restarts): each later
                # attempt looks first, so that a submission it did accept is not made twice.
                job_id = _patiently(lambda: self._adopt_or_submit(cluster, d, shapes, next(looks)))
                # Its nodes' addresses, asked for while Slurm starts it.
                ahead = addresses.Lookahead(self.slurm, self.settings.partition_of(cluster.infra))
                alloc, held = self._wait(job_id, d, state_dir)
            except _Cancelled:
                # Its request was cancelled: what it was waiting for goes too.
                self.slurm.run("scancel", f"--user={self.user}", f"--name={job_name(cluster.name)}",
                               "--state=PENDING", check=False, timeout=5)
                raise SkydError(ErrorCode.FAILED, "cancelled while waiting for Slurm; the "
                                "pending allocation was cancelled") from None
        return _patiently(lambda: self._nodes(alloc, held, ahead, d))

    def _query(self, *args: str) -> list[Allocation]:
        return parse_lines(self.slurm.run("squeue", "-h", "-a", "-t", "all", "-o", FORMAT,
                                          *args).stdout)

    def _find(self, cluster: str) -> Allocation | None:
        """The cluster's allocation that still holds or waits for nodes, if any."""
        allocs = self._query(f"--user={self.user}", f"--name={job_name(cluster)}")
        return newest(allocs, cluster, self.user, live_only=True)

    def _adopt_or_submit(self, cluster: ClusterRecord, d: str, shapes: list[list[str]],
                         look: bool) -> str:
        """The id of the cluster's allocation: one an interrupted launch left (or `start`
        on a cluster that is up), if `look`, else a new one — of the first shape Slurm
        accepts (the others differ in GPUs: one Slurm does not know, or no node has, is
        passed over)."""
        found = self._find(cluster.name) if look else None
        if found is not None:
            say(f"Using this cluster's allocation: {found.describe()}.")
            return found.job_id
        refused: SkydError | None = None
        for shape in shapes:
            try:
                return self._submit(cluster, d, shape)
            except SkydError as e:
                if e.code != ErrorCode.INVALID_TASK or not any(a.startswith("--gres=") for a in shape):
                    raise
                refused = refused or e
                say(f"Slurm refused {shape[-1].removeprefix('--gres=')}: {e.message}")
        assert refused is not None
        if len(shapes) == 1:
            raise refused
        tried = ", ".join(shape[-1].removeprefix("--gres=") for shape in shapes)
        raise SkydError(ErrorCode.INVALID_TASK, f"Slurm refused every GPU option of the task "
                        f"({tried}); the first: {refused.message}", refused.hint)

    def _submit(self, cluster: ClusterRecord, d: str, shape: list[str]) -> str:
        s = self.settings
        partition = s.partition_of(cluster.infra)
        say(f"Submitting an allocation to Slurm: {cluster.num_nodes} node(s)"
            f"{', ' + ' '.join(shape) if shape else ''}"
            f"{', partition ' + partition if partition else ''}...")
        p = self.slurm.run(
            "sbatch", "--parsable", f"--job-name={job_name(cluster.name)}",
            f"--nodes={cluster.num_nodes}", "--ntasks-per-node=1", *shape,
            *([f"--partition={partition}"] if partition else []),
            *([f"--account={s.account}"] if s.account else []),
            *([f"--qos={s.qos}"] if s.qos else []),
            *([f"--time={s.time_limit}"] if s.time_limit else []),
            f"--chdir={d}", "--output=/dev/null", f"--wrap={scripts.holder_script(d)}",
            check=False)
        if p.returncode == 0:
            return p.stdout.strip().split(";")[0]
        self._refused(p.stderr, partition, shape)
        raise failure("sbatch", p.returncode, p.stderr)

    def _refused(self, stderr: str, partition: str, shape: list[str]) -> None:
        for needle, text in REFUSALS.items():
            if needle.lower() in stderr.lower():
                s = self.settings
                raise SkydError(ErrorCode.INVALID_TASK, text.format(
                    where=f"partition {partition!r}" if partition else "the default partition",
                    partition=partition, account=s.account, qos=s.qos,
                    time_limit=s.time_limit, shape=" ".join(shape) or "the defaults"),
                    f"Slurm said: {stderr.strip().splitlines()[-1]}")

    def _wait(self, job_id: str, d: str, state_dir: str) -> tuple[Allocation, scripts.Held | None]:
        """Until the allocation holds its nodes. Its batch script's marker file says so at
        once. Meanwhile what Slurm does with it comes from the daemon's board (one squeue
        for every cluster: a waiting launch asks Slurm nothing), or — while the board is
        older than the submission (the daemon looks every watch_interval while clusters
        are launched) — from an squeue of its own, backing off. Slurm's pending reason
        goes to the request's log as it changes. Bounded: a reason Slurm will never get
        over, an allocation Slurm lost or ended, a controller silent for PATIENCE. With
        it, what its marker says it holds (None: seen without its marker)."""
        marker = f"{d}/{scripts.MARKER}-{job_id}"
        window = 0.0                        # how long the next look at the marker waits
        since = time.time()                 # boards from before this may not know the job
        fresh = 3 * self.settings.watch_interval + 2.0
        shown, missing, last_board = "", 0, 0.0
        boards = board.Reader(state_dir, self.uid)
        gap, next_query = POLL[0], time.monotonic() + POLL[0]
        answered = time.monotonic()
        while True:
            held = self.slurm.place.wait_file(marker, window)
            if held is not None:
                return self._holding(job_id, held)
            alloc, trouble = None, ""
            b = boards.get(fresh)
            if b is not None and b.time > since:
                next_query = time.monotonic() + gap         # the board serves
                alloc, trouble = b.get(job_id), b.error
                if alloc is None and not trouble and b.time != last_board:
                    missing += 1
                last_board = b.time
            elif time.monotonic() >= next_query:
                try:
                    alloc = self._one(job_id)
                    missing = 2 if alloc is None else 0
                except SlurmUnreachable as e:
                    trouble = e.message
                next_query, gap = time.monotonic() + gap, min(gap * 2, POLL[1])
            if missing >= 2:
                raise SkydError(ErrorCode.FAILED, f"Slurm no longer knows allocation {job_id} "
                                "(its controller may have restarted and lost it)", "launch again")
            if trouble:
                if time.monotonic() - answered > PATIENCE:
                    raise SkydError(ErrorCode.FAILED, f"{trouble} for {PATIENCE:g}s")
                if trouble != shown:
                    say(f"{trouble}; waiting for it")
                    shown = trouble
            elif alloc is not None:
                answered = time.monotonic()
                if alloc.holding:
                    return alloc, None
                self._check_pending(alloc)
                text = f"Waiting for Slurm: {alloc.describe()}"
                if text != shown:
                    say(text)
                    shown = text
            waited = time.time() - since
            window = next(step for until, step in MARKER_POLL if waited < until)
            if self.slurm.place.remote:     # one ssh looks for a second on the login node
                window = max(window, 1.0)

    def _one(self, job_id: str) -> Allocation | None:
        return next(iter(self._query(f"--jobs={job_id}")), None)

    def _holding(self, job_id: str, marker: str) -> tuple[Allocation, scripts.Held | None]:
        """The allocation whose batch script runs: what its marker (`marker`, its text)
        says it holds (else one squeue)."""
        held = scripts.parse_marker(marker)
        if held is not None:
            return Allocation(job_id, self.user, "RUNNING", held.nodes, held.cpus * held.nodes,
                              f"{held.mib}M", "", held.nodelist, "", ""), held
        alloc = _patiently(lambda: self._one(job_id))
        if alloc is None or not alloc.holding:
            raise SkydError(ErrorCode.FAILED, f"allocation {job_id} started and ended at once: "
                            f"{alloc.describe() if alloc else 'Slurm no longer knows it'}")
        return alloc, None

    def _check_pending(self, alloc: Allocation) -> None:
        """Fail (cancelling it) an allocation Slurm ended, or will never start."""
        if alloc.ended:
            raise SkydError(ErrorCode.FAILED, f"the allocation ended before it started: "
                            f"{alloc.describe()}")
        never = alloc.never_starts
        if never:
            self.slurm.run("scancel", alloc.job_id, check=False)
            raise SkydError(ErrorCode.INVALID_TASK, f"Slurm will never start this allocation: "
                            f"{never} ({alloc.reason}); it was cancelled",
                            "ask for less, or another partition")

    def release(self, cluster: ClusterRecord) -> None:
        """Cancel the cluster's allocation, and any other of its name still live."""
        ids = {n.allocation for n in cluster.nodes if valid_job_id(n.allocation)}
        try:
            found = self._query(f"--user={self.user}", f"--name={job_name(cluster.name)}")
        except SlurmUnreachable as e:
            raise SkydError(ErrorCode.FAILED, f"could not cancel the cluster's Slurm allocation: "
                            f"{e.message}", "the cluster stays; run down again once Slurm "
                            "answers") from None
        ids |= {a.job_id for a in found if not a.ended}
        for job_id in sorted(ids):
            p = self.slurm.run("scancel", job_id, check=False)
            if p.returncode != 0 and not any(s in p.stderr for s in UNKNOWN_JOB):
                raise failure("scancel", p.returncode, p.stderr)
            say(f"Cancelled Slurm job {job_id}.")

    def _nodes(self, alloc: Allocation, held: scripts.Held | None,
               ahead: addresses.Lookahead, d: str) -> list[NodeInfo]:
        """The allocation's nodes in Slurm's order (that of SLURM_NODEID), with their
        addresses (SkyPilot's node IPs) and what each holds for the cluster: from its
        marker and the addresses asked for ahead, else from Slurm now."""
        if held is not None and held.names:
            names = held.names
        elif any(c in alloc.nodelist for c in "[,"):
            names = self.slurm.run("scontrol", "show", "hostnames", alloc.nodelist).stdout.split()
        else:
            names = [alloc.nodelist]
        found = dict(held.addresses) if held is not None else {}
        rest = [name for name in names if name not in found]
        if rest:
            found |= ahead.of(rest) or addresses.ask(self.slurm, "-n", alloc.nodelist)
        cpus = alloc.cpus / max(1, alloc.nodes)
        say(f"Allocated: {alloc.describe()}.")
        return [NodeInfo(rank=i, ip=found.get(name) or name, host=name, path=str(d),
                         user=self.user, cpus=cpus, memory_bytes=memory_bytes(alloc.memory),
                         allocation=alloc.job_id)
                for i, name in enumerate(names)]


def _patiently(attempt: Callable[[], T]) -> T:
    """`attempt()`, again while Slurm's controller does not answer, for at most PATIENCE
    seconds (a restart takes well under one); then its error."""
    deadline = time.monotonic() + PATIENCE
    delay = 0.5
    while True:
        try:
            return attempt()
        except SlurmUnreachable as e:
            if time.monotonic() + delay > deadline:
                raise
            say(f"{e.message}; trying again in {delay:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def _raise_cancelled(signum: int, frame: object) -> None:
    raise _Cancelled()


@contextlib.contextmanager
def _cancellable() -> Iterator[None]:
    """SIGTERM (the request is cancelled) raises _Cancelled inside, so that the allocation
    is not left behind; the worker's own handling outside. Only the main thread may."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_cancelled)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
