"""Task YAML: a SkyPilot-compatible subset, decoded straight into typed Structs.

Imports only msgspec and the standard library: skyctl validates a task before it
sends it, and the daemon validates it again when the frame arrives. Part of the wire
contract, so it follows skyd.protocol's rules for skyctl's cold start: annotations are not
postponed (msgspec would compile their text) and nothing is compiled at import.

Supported fields: name, workdir, num_nodes, resources {cpus, memory, accelerators, infra,
job_recovery}, envs, secrets, file_mounts, setup, run. Anything else is an error naming the
field.
"""

import re
from typing import Any

import msgspec

# Values YAML may give for an env var; they are turned into strings.
EnvValue = str | int | float | bool | None

SUPPORTED_TOP = ("name", "workdir", "num_nodes", "resources", "envs", "secrets",
                 "file_mounts", "setup", "run")
SUPPORTED_RESOURCES = ("cpus", "memory", "accelerators", "infra", "job_recovery")
MAX_RESTARTS_ON_ERRORS = 100
MAX_NUM_NODES = 64
MAX_GPUS_PER_NODE = 64
# What one job's environment can carry: Linux refuses an exec whose single "NAME=value" string
# passes MAX_ARG_STRLEN (32 pages), and one whose strings together pass ARG_MAX (a quarter of
# the stack limit, 2 MiB by default): 1 MiB leaves room for the runner's own variables.
MAX_ENV_ENTRY_BYTES = 128 * 1024 - 1
MAX_ENV_TOTAL_BYTES = 1024 * 1024
# Matched with fullmatch: `$` would also match before a final newline. ASCII: \d and
# IGNORECASE would otherwise take other scripts' digits and letters. Kept as text: `re`
# compiles (and caches) each on first use, so importing the task format, as every skyctl
# command does, compiles none of them (~0.6 M instructions each).
_NAME = r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}"
_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_SLURM_PARTITION = r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}"
_GPU_MODEL = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
_AMOUNT = r"\s*(\d+(?:\.\d+)?)\s*(\+)?\s*(?:gb|g|gib)?\s*"


class TaskError(ValueError):
    """A task that cannot be accepted; the message names the field."""


class JobRecovery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """SkyPilot's `resources.job_recovery` (managed jobs only): a lost cluster is always
    relaunched; a failure of the task itself only this many times."""
    strategy: str | None = None               # accepted for compatibility; one strategy here
    max_restarts_on_errors: int = 0


class Resources(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    cpus: int | float | str | None = None     # 4, "4", "4+" (at least 4)
    memory: int | float | str | None = None   # GiB: 8, "8+", "8GB"
    # GPUs per node: "H100:8", "A100" (one), {"H100": 8} ; alternatives: a list in order of
    # preference (["H100:8", "A100:8"]) or a set/mapping ({H100: 8, A100: 8}, any of them).
    accelerators: str | list[str] | dict[str, int | None] | None = None
    infra: str | None = None                  # "local" (default), "ssh/POOL", "slurm[/PART]"
    job_recovery: str | JobRecovery | None = None   # "FAILOVER", or {max_restarts_on_errors: 3}


class Task(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: str | None = None
    workdir: str | None = None
    num_nodes: int = 1
    resources: Resources = msgspec.field(default_factory=Resources)
    envs: dict[str, EnvValue] = msgspec.field(default_factory=dict)
    secrets: dict[str, EnvValue] = msgspec.field(default_factory=dict)
    file_mounts: dict[str, str] = msgspec.field(default_factory=dict)
    setup: str | None = None
    run: str | None = None

    def __repr__(self) -> str:  # secrets never reach a log or a traceback
        shown = {f: getattr(self, f) for f in self.__struct_fields__ if f != "secrets"}
        shown["secrets"] = {k: "<redacted>" for k in self.secrets}
        return f"Task({shown!r})"

    __str__ = __repr__


class Amount(msgspec.Struct, frozen=True):
    """A resource request: `value` exactly, or at least `value` when `at_least`."""
    value: float
    at_least: bool

    def fits(self, available: float) -> bool:
        return available >= self.value


def parse_amount(field: str, raw: int | float | str | None) -> Amount | None:
    if raw is None:
        return None
    if isinstance(raw, bool):
        raise TaskError(f"resources.{field}: expected a number like 4 or '4+', got {raw!r}")
    if isinstance(raw, (int, float)):
        if raw <= 0:
            raise TaskError(f"resources.{field}: must be positive, got {raw}")
        return Amount(float(raw), False)
    m = re.fullmatch(_AMOUNT, raw, re.IGNORECASE | re.ASCII)
    if not m or float(m.group(1)) <= 0:
        raise TaskError(f"resources.{field}: expected a number like 4 or '4+', got {raw!r}")
    return Amount(float(m.group(1)), bool(m.group(2)))


class GpuAsk(msgspec.Struct, frozen=True):
    """`count` GPUs of `model` on each node (the model as the task wrote it)."""
    model: str
    count: int

    def __str__(self) -> str:
        return f"{self.model}:{self.count}"


def _gpu_ask(text: str, count: int | None = None) -> GpuAsk:
    where = "resources.accelerators"
    model, sep, raw = text.strip().partition(":")
    if sep:
        if count is not None:
            raise TaskError(f"{where}: {text!r}: give the count once (MODEL: COUNT)")
        m = re.fullmatch(r"\s*(\d{1,6})(\.\d*)?\s*", raw, re.ASCII)
        if m is None:
            raise TaskError(f"{where}: {text!r}: the count after ':' must be a number")
        if m.group(2) and m.group(2).strip(".0"):
            raise TaskError(f"{where}: {text!r}: whole GPUs only (fractions are not supported)")
        count = int(m.group(1))
    if count is None:
        count = 1
    if isinstance(count, bool) or not isinstance(count, int):
        raise TaskError(f"{where}: {model!r}: the count must be a whole number, got {count!r}")
    if not re.fullmatch(_GPU_MODEL, model, re.ASCII):
        raise TaskError(f"{where}: {model!r} is not a GPU model name (like H100, A100-80GB)")
    if not 1 <= count <= MAX_GPUS_PER_NODE:
        raise TaskError(f"{where}: {model}: the count must be between 1 and "
                        f"{MAX_GPUS_PER_NODE} per node, got {count}")
    return GpuAsk(model, count)


def parse_accelerators(raw: str | list[str] | dict[str, int | None] | None) -> tuple[GpuAsk, ...]:
    """The GPU options of a task, in order of preference (none: no GPUs). A list is an
    order of preference; a mapping (YAML's set `{A, B}` too) names equal alternatives, tried
    in the order written."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        asks = [_gpu_ask(raw)]
    elif isinstance(raw, list):
        asks = [_gpu_ask(item) for item in raw]
    else:
        asks = [_gpu_ask(model, count) for model, count in raw.items()]
    if not asks:
        raise TaskError("resources.accelerators: empty: name a GPU model, like H100:1")
    seen = set()
    for a in asks:
        if a.model.lower() in seen:
            raise TaskError(f"resources.accelerators: {a.model} is named twice")
        seen.add(a.model.lower())
    return tuple(asks)


def describe_accelerators(asks: tuple[GpuAsk, ...]) -> str:
    """How the GPUs asked for read in messages and listings: "H100:8" or "H100:8|A100:8"."""
    return "|".join(map(str, asks))


def shortfall(task: Task, cpus: float, memory_bytes: int) -> str | None:
    """What a node of this size lacks for the task, or None when it fits (0: unknown)."""
    want = parse_amount("cpus", task.resources.cpus)
    if want is not None and cpus and not want.fits(cpus):
        return f"has {cpus:g} CPUs; the task asks for {task.resources.cpus}"
    want = parse_amount("memory", task.resources.memory)
    if want is not None and memory_bytes and not want.fits(memory_bytes / 2**30):
        return (f"has {memory_bytes / 2**30:.1f} GiB of memory; the task asks for "
                f"{task.resources.memory} GiB")
    return None


def max_restarts_on_errors(task: Task) -> int:
    rec = task.resources.job_recovery
    return rec.max_restarts_on_errors if isinstance(rec, JobRecovery) else 0


def _env_str(value: EnvValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _friendly(err: msgspec.ValidationError) -> str:
    """Turn msgspec's message into one that names the field in task terms."""
    text = str(err)
    m = re.match(r"Object contains unknown field `([^`]+)`(?: - at `\$(.*)`)?", text)
    if m:
        field, where = m.group(1), (m.group(2) or "").lstrip(".")
        if where == "resources":
            return (f"unsupported field `resources.{field}` "
                    f"(skyd supports resources: {', '.join(SUPPORTED_RESOURCES)})")
        if where == "resources.job_recovery":
            return (f"unsupported field `resources.job_recovery.{field}` "
                    "(skyd supports: strategy, max_restarts_on_errors)")
        prefix = f"{where}." if where else ""
        return (f"unsupported field `{prefix}{field}` "
                f"(skyd supports: {', '.join(SUPPORTED_TOP)})")
    text = text.replace(" - at `$.", " at `").replace(" - at `$`", "")
    if text.endswith(("at `run`", "at `setup`")) and "Expected `str" in text:
        text += " (quote the command in YAML, e.g. run: 'true')"
    return text


def task_from_obj(obj: Any) -> Task:
    """Validate a parsed YAML document (or wire value) into a normalised Task."""
    if obj is None:
        raise TaskError("the task is empty")
    if not isinstance(obj, dict):
        raise TaskError(f"a task must be a mapping of fields, got {type(obj).__name__}")
    try:
        task = msgspec.convert(obj, Task)
    except msgspec.ValidationError as e:
        raise TaskError(_friendly(e)) from None
    return normalise(task)


def _check_env_sizes(task: Task) -> None:
    """Values the kernel would refuse at exec, found at submission rather than in the job."""
    total = 0
    for label, mapping in (("envs", task.envs), ("secrets", task.secrets)):
        for key, value in mapping.items():
            text = _env_str(value)
            if "\0" in text:
                raise TaskError(f"{label}: the value of {key} contains a NUL byte, which no "
                                "environment variable can carry")
            size = len(key.encode()) + 1 + len(text.encode())
            if size > MAX_ENV_ENTRY_BYTES:
                raise TaskError(f"{label}: {key} is {size} bytes; one variable may be at most "
                                f"{MAX_ENV_ENTRY_BYTES} (put bigger data in a file)")
            total += size + 1
    if total > MAX_ENV_TOTAL_BYTES:
        raise TaskError(f"envs: the variables together are {total} bytes; at most "
                        f"{MAX_ENV_TOTAL_BYTES} (put bigger data in a file)")


def _check_file_mounts(task: Task) -> None:
    """A target lives on the node; a source is a local path."""
    for dst, src in task.file_mounts.items():
        if not dst or not src:
            raise TaskError("file_mounts: both the target and the source must be non-empty")
        if "://" in src:
            raise TaskError(f"file_mounts: {dst}: only local paths are supported, got {src!r}")
        # A target lives on the node (relative to it, or to ~): nothing may climb out.
        if ".." in dst.split("/"):
            raise TaskError(f"file_mounts: target {dst!r} must not contain '..': targets "
                            "stay on the node")
        if dst.startswith("~") and dst != "~" and not dst.startswith("~/"):
            raise TaskError(f"file_mounts: target {dst!r}: only ~ or ~/PATH (your own home) "
                            "may start with '~'")
        if "\0" in dst or "\n" in dst:
            raise TaskError(f"file_mounts: target {dst!r} contains a NUL or newline")


def normalise(task: Task) -> Task:
    """Check values that types alone cannot, and turn env values into strings."""
    if task.name is not None and not re.fullmatch(_NAME, task.name):
        raise TaskError(f"name: {task.name!r} must be 1-63 letters, digits, '.', '_' or '-'")
    if not 1 <= task.num_nodes <= MAX_NUM_NODES:
        raise TaskError(f"num_nodes: must be between 1 and {MAX_NUM_NODES}, got {task.num_nodes}")
    for label, mapping in (("envs", task.envs), ("secrets", task.secrets)):
        for key in mapping:
            if not re.fullmatch(_ENV_NAME, key):
                raise TaskError(f"{label}: {key!r} is not a valid environment variable name")
    _check_env_sizes(task)
    for field, value in (("run", task.run), ("setup", task.setup), ("workdir", task.workdir),
                         *((f"file_mounts.{d}", v) for d, v in task.file_mounts.items())):
        if value is not None and "\0" in value:
            raise TaskError(f"{field}: contains a NUL byte, which no command or path can carry")
    overlap = set(task.envs) & set(task.secrets)
    if overlap:
        raise TaskError(f"secrets: {sorted(overlap)[0]!r} is also in envs; name it once")
    parse_amount("cpus", task.resources.cpus)
    parse_amount("memory", task.resources.memory)
    parse_accelerators(task.resources.accelerators)
    infra_kind(task.resources.infra)
    if not 0 <= max_restarts_on_errors(task) <= MAX_RESTARTS_ON_ERRORS:
        raise TaskError("resources.job_recovery.max_restarts_on_errors: must be between 0 and "
                        f"{MAX_RESTARTS_ON_ERRORS}, got {max_restarts_on_errors(task)}")
    _check_file_mounts(task)
    if task.run is None and task.setup is None:
        raise TaskError("the task has neither `run` nor `setup`: nothing to do")
    envs = {k: _env_str(v) for k, v in task.envs.items()}
    secrets = {k: _env_str(v) for k, v in task.secrets.items()}
    return msgspec.structs.replace(task, envs=envs, secrets=secrets)


def infra_kind(infra: str | None) -> tuple[str, str | None]:
    """'local' -> ('local', None); 'ssh/pool' -> ('ssh', 'pool'); 'slurm' -> ('slurm',
    None) (the default partition); 'slurm/part' -> ('slurm', 'part')."""
    if infra is None or infra == "local":
        return "local", None
    kind, _, pool = infra.partition("/")
    if kind == "ssh" and pool:
        return "ssh", pool
    if kind == "slurm" and (not pool or re.fullmatch(_SLURM_PARTITION, pool)):
        return "slurm", pool or None
    raise TaskError(f"resources.infra: unsupported infra {infra!r} "
                    "(use 'local', 'ssh/POOL', 'slurm' or 'slurm/PARTITION')")


def infra_name(infra: str | None) -> str:
    """The canonical `infra` of a cluster or managed job for a task's resources.infra."""
    kind, pool = infra_kind(infra)
    return f"{kind}/{pool}" if pool else kind
