"""A cluster's allocation as Slurm reports it (one `squeue` line), what its state means
for the cluster, and the names that tie an allocation to its cluster and owner."""

from __future__ import annotations

import re

import msgspec

# squeue's fields, `|`-separated; the reason last (it is free text).
FORMAT = "%i|%u|%T|%D|%C|%m|%L|%N|%j|%r"
JOB_PREFIX = "skyd-"            # an allocation is named skyd-CLUSTER
STEP_PREFIX = "skyd-job-"       # a job's step is named skyd-job-ID

# States in which the allocation holds its nodes (jobs can run, or will again).
HOLDING = frozenset({"RUNNING", "SUSPENDED", "SIGNALING", "RESIZING", "STOPPED"})
# States in which it waits for nodes.
WAITING = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                     "RESV_DEL_HOLD"})
# Pending reasons that mean Slurm will never start it as asked (the request does not fit
# the partition, or the account / QOS may not use it): the launch fails at once.
NEVER = {
    "PartitionConfig": "the request is larger than the partition allows (or any node offers)",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a time limit above the partition's",
    "BadConstraints": "no node satisfies its constraints",
    "InvalidAccount": "the account is not valid",
    "InvalidQOS": "the QOS is not valid",
    "AccountNotAllowed": "the account may not use the partition",
    "QOSNotAllowed": "the QOS may not be used in the partition",
    "DependencyNeverSatisfied": "a dependency can never be satisfied",
}
_MEMORY_RE = re.compile(r"(\d+(?:\.\d+)?)([KMGTP]?)")
_JOB_ID_RE = re.compile(r"[0-9]{1,12}")
_UNITS = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def valid_job_id(text: str) -> bool:
    """A Slurm job id as skyd records it (workers report them: checked before use)."""
    return bool(_JOB_ID_RE.fullmatch(text))


def job_name(cluster: str) -> str:
    return JOB_PREFIX + cluster


def step_name(job_id: int) -> str:
    return f"{STEP_PREFIX}{job_id}"


def memory_bytes(text: str) -> int:
    """squeue's memory (per node) in bytes: '500M', '4G', '0' (0: unknown)."""
    m = _MEMORY_RE.fullmatch(text.strip())
    return int(float(m.group(1)) * _UNITS[m.group(2) or "M"]) if m else 0


class Allocation(msgspec.Struct, frozen=True):
    job_id: str
    user: str
    state: str
    nodes: int
    cpus: int               # all nodes together
    memory: str             # per node, as squeue writes it
    time_left: str
    nodelist: str
    name: str
    reason: str

    @classmethod
    def parse(cls, line: str) -> "Allocation | None":
        parts = line.split("|", 9)
        if len(parts) != 10 or not parts[0].strip():
            return None
        jid, user, state, nodes, cpus, mem, left, nodelist, name, reason = parts
        # "CANCELLED by 0" -> CANCELLED
        return cls(jid.strip(), user.strip(), state.split()[0] if state.strip() else "",
                   _int(nodes), _int(cpus), mem.strip(), left.strip(), nodelist.strip(),
                   name.strip(), reason.strip())

    @property
    def holding(self) -> bool:
        return self.state in HOLDING

    @property
    def waiting(self) -> bool:
        return self.state in WAITING

    @property
    def ended(self) -> bool:
        return not (self.holding or self.waiting)

    @property
    def never_starts(self) -> str:
        """Why Slurm will never start it ("" when it may)."""
        return NEVER.get(self.reason, "") if self.waiting else ""

    def describe(self, time_left: bool = True) -> str:
        """For people: 'Slurm job 12 PENDING (Resources)', 'Slurm job 12 RUNNING on node1,
        1:59:58 left', 'Slurm job 12 TIMEOUT'."""
        why = self.reason if self.reason and self.reason != "None" else ""
        where = f" on {self.nodelist}" if self.holding and self.nodelist else ""
        left = f", {self.time_left} left" if time_left and self.holding and self.time_left not in (
            "", "UNLIMITED", "INVALID", "NOT_SET") else ""
        return f"Slurm job {self.job_id} {self.state}{where}{left}" + (f" ({why})" if why else "")


def parse_lines(text: str) -> list[Allocation]:
    return [a for a in map(Allocation.parse, text.splitlines()) if a is not None]


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return 0


def newest(allocs: list[Allocation], cluster: str, user: str,
           live_only: bool = False) -> Allocation | None:
    """The cluster's most recent allocation (by job id) among `allocs`."""
    mine = [a for a in allocs if a.name == job_name(cluster) and a.user == user
            and not (live_only and a.ended)]
    return max(mine, key=lambda a: _int(a.job_id.split("_")[0]), default=None)
