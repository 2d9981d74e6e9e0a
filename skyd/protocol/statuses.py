"""Every status and queue name on the wire, as str-Enums: msgspec sends each by its value
(exactly the strings below), and a value that is not one of them is a clear decoding error.
A StrEnum compares equal to its value, so `status == "UP"` still holds."""

from __future__ import annotations

import enum


class Queue(enum.StrEnum):
    """Where a request runs."""
    LONG = "long"      # minutes of blocking work, in a worker process
    SHORT = "short"    # milliseconds, a coroutine in the daemon's loop
    INLINE = "inline"  # control (cancel, info): answered at once, never queued
    JOBS = "jobs"      # a managed job: durable at once, then driven by the jobs controller


class Status(enum.StrEnum):
    """A request's status."""
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})


class ClusterState(enum.StrEnum):
    """A cluster's status."""
    INIT = "INIT"              # being provisioned (or a launch on it failed part-way)
    UP = "UP"                  # its nodes answer: jobs run
    UNHEALTHY = "UNHEALTHY"    # UP, but a node does not answer (status_reason says which);
    #                            it is UP again once the node answers
    STOPPED = "STOPPED"        # stopped by its owner or by autostop: `start` brings it up


# Clusters whose jobs may start or go on (an unhealthy node may come back).
CLUSTER_RUNNABLE = frozenset({ClusterState.UP, ClusterState.UNHEALTHY})


class JobStatus(enum.StrEnum):
    """A job's status on its cluster."""
    PENDING = "PENDING"            # submitted: waiting for setup, or for room on the cluster
    SETTING_UP = "SETTING_UP"      # its launch runs the task's setup
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    FAILED_SETUP = "FAILED_SETUP"  # setup failed: it never ran
    CANCELLED = "CANCELLED"


JOB_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.FAILED_SETUP,
                          JobStatus.CANCELLED})


class ManagedJobStatus(enum.StrEnum):
    """A managed job's status: the steps of its state machine (skyd/managed), then how it
    ended."""
    PENDING = "PENDING"            # queued for a launch slot (and hosts)
    STARTING = "STARTING"          # its cluster is being launched
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"      # its cluster or a node was lost, or the task failed with
    #                                restarts left: torn down and launched again
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"                          # the task failed (no restarts left)
    FAILED_SETUP = "FAILED_SETUP"
    FAILED_PRECHECKS = "FAILED_PRECHECKS"      # the task can never run (invalid for its infra)
    FAILED_NO_RESOURCE = "FAILED_NO_RESOURCE"  # its launches kept failing
    FAILED_CONTROLLER = "FAILED_CONTROLLER"    # the controller itself failed on it
    CANCELLED = "CANCELLED"


MANAGED_STEPS = (ManagedJobStatus.PENDING, ManagedJobStatus.STARTING, ManagedJobStatus.RUNNING,
                 ManagedJobStatus.RECOVERING, ManagedJobStatus.CANCELLING)
MANAGED_ACTIVE = frozenset(MANAGED_STEPS)
MANAGED_FINISHED = frozenset(ManagedJobStatus) - MANAGED_ACTIVE
