"""Messages between the daemon and a long-request worker process (never on the public wire).

The daemon sends one Assignment; the worker answers with state changes as they happen
(so the daemon, the single writer, persists them) and one Done at the end.
"""

from __future__ import annotations

from typing import Any

import msgspec

from skyd.infra.slurm import SlurmSettings
from skyd.protocol import ClusterRecord, Error, JobRecord


class JobEntry(msgspec.Struct):
    record: JobRecord
    handle: bytes | None = None


class Assignment(msgspec.Struct, tag="assign", tag_field="t"):
    request_id: str
    op: bytes                       # the Op, msgpack (decoded by the worker)
    uid: int
    gid: int
    user: str
    home: str
    state_dir: str
    cluster: ClusterRecord | None = None
    # launch/exec: the job this request creates; stop/down: the cluster's live jobs
    jobs: list[JobEntry] = []
    ssh_known_hosts: str = ""
    slurm: SlurmSettings | None = None      # the daemon's `slurm:` settings, if any


class SaveCluster(msgspec.Struct, tag="save_cluster", tag_field="t"):
    record: ClusterRecord


class DropCluster(msgspec.Struct, tag="drop_cluster", tag_field="t"):
    name: str


class SaveJob(msgspec.Struct, tag="save_job", tag_field="t"):
    record: JobRecord
    handle: bytes | None = None


class Done(msgspec.Struct, tag="done", tag_field="t", omit_defaults=True):
    value: Any = None
    error: Error | None = None


WorkerMsg = SaveCluster | DropCluster | SaveJob | Done
