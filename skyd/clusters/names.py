"""Cluster names: which are valid, the generated ones, the prefix reserved for managed
jobs; and the short description of a task's resources a cluster shows."""

from __future__ import annotations

import re
import secrets

from skyd.identity import user_identity
from skyd.protocol import ErrorCode, SkydError
from skyd.taskspec import Task, describe_accelerators, parse_accelerators

MANAGED_PREFIX = "managed-"      # managed job N runs on cluster managed-N

# ASCII only (with IGNORECASE, [a-z] would also take the Kelvin sign and the long s);
# fullmatch, since `$` also matches before a final newline.
_CLUSTER_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.IGNORECASE | re.ASCII)


def check_cluster_name(name: str) -> None:
    if not _CLUSTER_NAME.fullmatch(name):
        raise SkydError(ErrorCode.BAD_REQUEST,
                        f"invalid cluster name {name!r}: use 1-63 letters, digits and '-', "
                        "starting and ending with a letter or digit")


def generate_cluster_name(uid: int) -> str:
    user = re.sub(r"[^a-z0-9]", "", user_identity(uid)[0].lower())[:16] or "user"
    return f"sky-{secrets.token_hex(2)}-{user}"


def describe_resources(task: Task) -> str:
    parts = []
    if task.resources.cpus is not None:
        parts.append(f"cpus={task.resources.cpus}")
    if task.resources.memory is not None:
        parts.append(f"mem={task.resources.memory}")
    gpus = parse_accelerators(task.resources.accelerators)
    if gpus:
        parts.append(f"gpus={describe_accelerators(gpus)}")
    return ", ".join(parts) or "-"
