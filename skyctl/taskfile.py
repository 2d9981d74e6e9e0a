"""Reading a task: a YAML file, or an inline command, plus command-line overrides.

yaml is imported here only, so commands that take no task never pay for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from skyd.taskspec import Task, TaskError, task_from_obj

MAX_TASK_FILE = 1024 * 1024   # a task file is a few KiB; refuse what cannot be one


def _looks_like_file(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or os.path.isfile(arg)


def load(arg: str | None, overrides: dict) -> Task:
    """`arg` is a YAML path or an inline `run` command (like `sky launch 'echo hi'`)."""
    if arg is None:
        doc: dict = {}
    elif _looks_like_file(arg):
        doc = _read_yaml(Path(arg))
    else:
        doc = {"run": arg}
    doc = dict(doc)
    res = dict(doc.get("resources") or {}) if isinstance(doc.get("resources"), dict) else \
        doc.get("resources")
    for key in ("cpus", "memory", "infra"):
        if overrides.get(key) is not None:
            res = dict(res or {})
            res[key] = overrides[key]
    if res is not None:
        doc["resources"] = res
    if overrides.get("num_nodes") is not None:
        doc["num_nodes"] = overrides["num_nodes"]
    if overrides.get("workdir") is not None:
        doc["workdir"] = overrides["workdir"]
    if overrides.get("name") is not None:
        doc["name"] = overrides["name"]
    if overrides.get("envs"):
        envs = dict(doc.get("envs") or {})
        envs.update(overrides["envs"])
        doc["envs"] = envs
    task = task_from_obj(doc)
    return _absolute_paths(task)


def _read_yaml(path: Path) -> dict:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise TaskError(f"task file {path} does not exist") from None
    if size > MAX_TASK_FILE:
        raise TaskError(f"task file {path} is {size} bytes; a task file may be at most "
                        f"{MAX_TASK_FILE} bytes")
    import yaml
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TaskError(f"{path} is not valid YAML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"cannot read {path}: {e}") from None
    if doc is None:
        raise TaskError(f"{path} is empty")
    if not isinstance(doc, dict):
        raise TaskError(f"{path}: a task must be a mapping of fields, got {type(doc).__name__}")
    return doc


def _absolute_paths(task: Task) -> Task:
    """The daemon does not share our working directory: send absolute paths
    (relative ones are relative to where skyctl runs, as in SkyPilot)."""
    import msgspec

    def absolute(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (Path.cwd() / q).resolve())

    workdir = absolute(task.workdir) if task.workdir else None
    mounts = {dst: absolute(src) for dst, src in task.file_mounts.items()}
    return msgspec.structs.replace(task, workdir=workdir, file_mounts=mounts)


def parse_env(items: list[str] | None) -> dict[str, str]:
    """--env KEY=VALUE, or --env KEY to pass the caller's value through."""
    envs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                raise TaskError(f"--env {key}: not set in your environment (use KEY=VALUE)")
            value = os.environ[key]
        envs[key] = value
    return envs
