"""Reading a task: a YAML file, or an inline command, plus command-line overrides.

yaml is imported here only, so commands that take no task never pay for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from skyd.taskspec import Task, TaskError, task_from_obj

MAX_TASK_FILE = 1024 * 1024   # a task file is a few KiB; refuse what cannot be one


def looks_like_file(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or os.path.isfile(arg)


# Overrides that replace a field of `resources`, and those that replace a top-level one.
_RESOURCE_OVERRIDES = ("cpus", "memory", "accelerators", "infra")
_TOP_OVERRIDES = ("num_nodes", "workdir", "name")


def load(arg: str | None, overrides: dict) -> Task:
    """`arg` is a YAML path or an inline `run` command (like `sky launch 'echo hi'`).
    `overrides` (from the command line) win over the file: cpus, memory, accelerators, infra, num_nodes,
    workdir, name, and envs and secrets (merged into the file's)."""
    path = Path(arg) if arg is not None and looks_like_file(arg) else None
    source = b""
    if arg is None:
        doc: dict = {}
    elif path is not None:
        source, doc = _read_yaml(path)
    else:
        doc = {"run": arg}
    doc = _merged(doc, overrides)
    try:
        task = _absolute_paths(task_from_obj(doc))
    except TaskError as e:
        if path is None:
            raise
        given = {k for k, v in overrides.items() if v}
        raise TaskError(f"{_where(path, source, str(e), given)}: {e}") from None
    check_local_paths(task)
    return task


def _merged(doc: dict, overrides: dict) -> dict:
    doc = dict(doc)
    res = dict(doc.get("resources") or {}) if isinstance(doc.get("resources"), dict) else \
        doc.get("resources")
    for key in _RESOURCE_OVERRIDES:
        if overrides.get(key) is not None:
            res = dict(res or {})
            res[key] = overrides[key]
    if res is not None:
        doc["resources"] = res
    for key in _TOP_OVERRIDES:
        if overrides.get(key) is not None:
            doc[key] = overrides[key]
    for key in ("envs", "secrets"):
        if overrides.get(key):
            merged = dict(doc.get(key) or {})
            merged.update(overrides[key])
            doc[key] = merged
    return doc


def _where(path: Path, source: bytes, message: str, overridden: set[str]) -> str:
    """`path` and, when the message names a field the file sets, its line."""
    import re
    named = re.findall(r"`([A-Za-z_][\w.]*)`", message) or re.findall(r"^([A-Za-z_][\w.]*):", message)
    if not named or named[-1].split(".")[-1] in overridden:
        return str(path)
    line = _line_of(source, named[-1].split("."))
    return f"{path}, line {line}" if line else str(path)


def _line_of(source: bytes, keys: list[str]) -> int | None:
    import yaml
    try:
        node = yaml.compose(source.decode())
    except (yaml.YAMLError, UnicodeDecodeError):
        return None
    line = None
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        for k, v in node.value:
            if k.value == key:
                line, node = k.start_mark.line + 1, v
                break
        else:
            break
    return line


def _read_yaml(path: Path) -> tuple[bytes, dict]:
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
        except yaml.MarkedYAMLError as e:
            raise TaskError(_yaml_problem(path, e)) from None
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
    return source, doc


def _yaml_problem(path: Path, e) -> str:
    """`task.yaml is not valid YAML: line 3, column 7: mapping values are not allowed
    here`: the file's name, not yaml's "<unicode string>"."""
    mark = e.problem_mark or e.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    context = f" ({e.context}, line {e.context_mark.line + 1})" \
        if e.context and e.context_mark and e.context_mark is not mark else ""
    return f"{path} is not valid YAML: {where}{e.problem or e.context}{context}"


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

    def absolute(p: str, field: str) -> str:
        if "\0" in p:
            raise TaskError(f"`{field}`: the path {p!r} contains a NUL byte")
        try:
            q = Path(p).expanduser()
            return str(q if q.is_absolute() else (Path.cwd() / q).resolve())
        except (RuntimeError, OSError) as e:     # ~nosuchuser, a symlink loop
            raise TaskError(f"`{field}`: cannot resolve the path {p!r}: {e}") from None

    workdir = absolute(task.workdir, "workdir") if task.workdir else None
    mounts = {dst: absolute(src, f"file_mounts.{dst}") for dst, src in task.file_mounts.items()}
    return msgspec.structs.replace(task, workdir=workdir, file_mounts=mounts)


def check_local_paths(task: Task) -> None:
    """What would otherwise fail only after provisioning, found before anything is queued."""
    if task.workdir is not None:
        if not os.path.exists(task.workdir):
            raise TaskError(f"workdir {task.workdir} does not exist")
        if not os.path.isdir(task.workdir):
            raise TaskError(f"workdir {task.workdir} is not a directory")
    for dst, src in task.file_mounts.items():
        if not os.path.exists(src):
            raise TaskError(f"file_mounts: {dst}: the source {src} does not exist")


def parse_env(items: list[str] | None, flag: str = "--env") -> dict[str, str]:
    """--env KEY=VALUE, or --env KEY to pass the caller's value through (as SkyPilot);
    --secret likewise."""
    envs = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                raise TaskError(f"{flag} {key}: not set in your environment (use KEY=VALUE)")
            value = os.environ[key]
        envs[key] = value
    return envs


def parse_env_file(path: str) -> dict[str, str]:
    """A dotenv file (--env-file): KEY=VALUE lines, `export ` allowed, values optionally
    quoted ('...' literal, "..." with \\n escapes), # comments and blank lines skipped."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(f"--env-file: cannot read {path}: {e}") from None
    envs = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise TaskError(f"--env-file {path}, line {n}: expected KEY=VALUE, got {raw!r}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        envs[key] = value
    return envs
