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
    try:
        source = path.read_bytes()
    except OSError as e:
        raise TaskError(f"cannot read {path}: {e}") from None
    doc = _cached(source)
    if doc is None:
        import yaml
        try:
            doc = yaml.safe_load(source.decode())
        except yaml.YAMLError as e:
            raise TaskError(f"{path} is not valid YAML: {e}") from None
        except UnicodeDecodeError as e:
            raise TaskError(f"cannot read {path}: {e}") from None
        if isinstance(doc, dict):
            _remember(source, doc)
    if doc is None:
        raise TaskError(f"{path} is empty")
    if not isinstance(doc, dict):
        raise TaskError(f"{path}: a task must be a mapping of fields, got {type(doc).__name__}")
    return doc


# Parsed task files, keyed by their exact bytes: submitting the same file again (the
# 2,000-job loop) skips importing yaml, a quarter of skyctl's start-up. Like bytecode
# caches, a miss or an unwritable cache only costs the parse.
def _cache_file(source: bytes) -> Path:
    import zlib
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "skyctl", "tasks", f"{zlib.crc32(source):08x}-{len(source)}.msgpack")


def _cached(source: bytes) -> dict | None:
    import msgspec
    try:
        entry = msgspec.msgpack.decode(_cache_file(source).read_bytes())
    except (OSError, msgspec.DecodeError):
        return None
    if not isinstance(entry, dict) or entry.get("source") != source:
        return None
    doc = entry.get("doc")
    return doc if isinstance(doc, dict) else None


def _remember(source: bytes, doc: dict) -> None:
    import msgspec
    try:
        blob = msgspec.msgpack.encode({"source": source, "doc": doc})
    except (TypeError, ValueError, OverflowError):
        return              # YAML values msgpack cannot carry (dates): parse each time
    path = _cache_file(source)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        pass


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
