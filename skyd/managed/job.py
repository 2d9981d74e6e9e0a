"""A managed job as the controller holds it: its persisted record beside its runtime, and
the outcome of a request it waited on."""

from __future__ import annotations

import asyncio
import enum
from typing import Any

import msgspec

from skyd import protocol
from skyd.clusters.names import MANAGED_PREFIX
from skyd.protocol import ManagedJobRecord, Status
from skyd.requests.request import stored_error
from skyd.streams import Topic
from skyd.taskspec import Task, infra_kind

ACTIVE = protocol.MANAGED_ACTIVE


class Job:
    """A managed job's runtime beside its persisted record."""

    __slots__ = ("record", "task", "wake", "topic", "driver", "holds_slot", "reserved",
                 "unhealthy_since")

    def __init__(self, record: ManagedJobRecord, task: Task):
        self.record = record
        self.task = task
        self.wake = asyncio.Event()      # something about it changed: look again
        self.topic = Topic()             # its followers (jobs logs) wake on every change
        self.driver: asyncio.Task | None = None
        self.holds_slot = False
        self.reserved = 0                # ssh hosts counted as taken while it launches
        self.unhealthy_since: float | None = None

    @property
    def pool(self) -> str | None:
        kind, pool = infra_kind(self.task.resources.infra)
        return pool if kind == "ssh" else None


class CancelResult(enum.StrEnum):
    """What a cancel did to a managed job."""
    CANCELLED = "cancelled"      # it was only queued: it never starts
    CANCELLING = "cancelling"    # it is being stopped (its cluster torn down)
    FINISHED = "finished"        # it had already finished


class RequestOutcome(msgspec.Struct):
    """How a launch or down request the controller waited on ended."""
    status: Status
    error: protocol.Error | None = None
    value: Any = None


def outcome(status: Status, result: Any) -> RequestOutcome:
    error = stored_error(status, result)
    return RequestOutcome(status, error, None if error is not None else result)


def job_id_of(cluster: str) -> int:
    """The managed job a cluster runs (managed-N), or -1."""
    try:
        return int(cluster[len(MANAGED_PREFIX):])
    except ValueError:
        return -1
