"""Detecting a host's GPUs: `nvidia-smi --query-gpu=index,name,memory.total
--format=csv,noheader,nounits` on the daemon's own host (local) or over a pool's ssh
connection, parsed into GPUs with the model names tasks use (H100, A100-80GB, RTX4090).

A host without `nvidia-smi` has no GPUs; one whose `nvidia-smi` fails (no driver, a
broken GPU) is a detection error, reported with its last lines, never a guess.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess

import msgspec

from skyd.protocol import NodeInfo

QUERY = "index,name,memory.total"
PROBE_TIMEOUT = 15.0
# The remote probe: the host's GPUs, then its CPUs and memory (what placement counts),
# each section after a marker line. `command -v` tells a host without nvidia-smi (no
# GPUs) from one whose nvidia-smi fails.
REMOTE_PROBE = (
    "echo '#gpus'\n"
    "if command -v nvidia-smi >/dev/null 2>&1; then\n"
    f"  nvidia-smi --query-gpu={QUERY} --format=csv,noheader,nounits 2>&1 || "
    "echo \"#failed $?\"\n"
    "else echo '#none'; fi\n"
    "echo '#size'; nproc; awk '/MemTotal/ {print $2 * 1024}' /proc/meminfo\n")


class Gpu(msgspec.Struct, frozen=True):
    index: int
    model: str          # as tasks name it
    name: str           # as nvidia-smi names it
    memory_mib: int = 0


class Detected(msgspec.Struct):
    """What one probe of a host found. `error`: the GPUs could not be detected (`gpus` is
    then empty and means nothing)."""
    gpus: list[Gpu] = []
    error: str = ""
    cpus: float = 0.0            # 0: not measured
    memory_bytes: int = 0


_VENDOR = re.compile(r"^(nvidia|tesla|quadro|geforce)\s+", re.IGNORECASE)


def model_of(name: str, memory_mib: int = 0) -> str:
    """The model a task names for a GPU nvidia-smi calls `name`, as SkyPilot names them:
    "NVIDIA H100 80GB HBM3" -> H100, "NVIDIA A100-SXM4-80GB" -> A100-80GB,
    "NVIDIA GeForce RTX 4090" -> RTX4090, "Tesla V100-SXM2-16GB" -> V100."""
    rest = name.strip()
    while True:
        stripped = _VENDOR.sub("", rest)
        if stripped == rest:
            break
        rest = stripped
    words = rest.split()
    if not words:
        return name.strip() or "unknown"
    if words[0].upper() == "RTX" and len(words) > 1:
        return "RTX" + words[1].split("-")[0]
    base = words[0].split("-")[0]
    if base.upper() == "A100" and memory_mib >= 70_000:
        return "A100-80GB"
    return base


def parse_query(text: str) -> list[Gpu]:
    """nvidia-smi's CSV (index, name, memory.total in MiB; units tolerated) as GPUs."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 or not fields[0].isdigit():
            raise ValueError(f"unexpected nvidia-smi output: {line.strip()[:200]!r}")
        memory = re.match(r"\d+", fields[2])
        mib = int(memory.group()) if memory else 0
        gpus.append(Gpu(index=int(fields[0]), model=model_of(fields[1], mib), name=fields[1],
                        memory_mib=mib))
    return sorted(gpus, key=lambda g: g.index)


def parse_remote(out: str) -> Detected:
    """The output of REMOTE_PROBE."""
    gpu_part, _, size_part = out.partition("#size")
    gpu_text = gpu_part.split("#gpus", 1)[-1].strip()
    found = Detected()
    size = size_part.split()
    if len(size) >= 2:
        try:
            found.cpus, found.memory_bytes = float(size[0]), int(float(size[1]))
        except ValueError:
            pass
    if gpu_text == "#none":
        return found
    lines = gpu_text.splitlines()
    if lines and lines[-1].startswith("#failed"):
        detail = "\n".join(lines[:-1]).strip().splitlines()
        found.error = (f"nvidia-smi failed (exit status {lines[-1].split()[-1]}): "
                       f"{detail[-1] if detail else 'no output'}")
        return found
    try:
        found.gpus = parse_query(gpu_text)
    except ValueError as e:
        found.error = str(e)
    return found


async def detect_local(path: str | None = None) -> Detected:
    """This host's GPUs: `nvidia-smi` on the daemon's PATH (none there: no GPUs)."""
    program = shutil.which("nvidia-smi", path=path or os.environ.get("PATH"))
    if program is None:
        return Detected()
    try:
        proc = await asyncio.create_subprocess_exec(
            program, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        return Detected(error=f"nvidia-smi could not run: {e}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return Detected(error=f"nvidia-smi gave no answer within {PROBE_TIMEOUT:g}s")
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        last = text.strip().splitlines()
        return Detected(error=f"nvidia-smi failed (exit status {proc.returncode}): "
                              f"{last[-1] if last else 'no output'}")
    try:
        return Detected(gpus=parse_query(text))
    except ValueError as e:
        return Detected(error=str(e))


async def detect_remote(client, node: NodeInfo) -> Detected:
    """A pool host's GPUs, CPUs and memory over ssh (`client`: skyd.infra.ssh.SshClient),
    reached as `node` says (its login, its owner's ssh or the pool's shared login)."""
    try:
        rc, out, err = await client.arun(node, REMOTE_PROBE, PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        return Detected(error=f"no answer within {PROBE_TIMEOUT:g}s")
    if rc != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return Detected(error=f"cannot reach {node.ip}:{node.port}: "
                              f"{lines[-1] if lines else f'exit status {rc}'}")
    return parse_remote(out.decode(errors="replace"))


def gpu_env(gpus: list[int] | None) -> dict[str, str]:
    """What a job's process gets for the GPUs it holds on its node: CUDA_VISIBLE_DEVICES
    names exactly those (empty: none of the host's). None: the node has no GPUs to hide."""
    if gpus is None:
        return {}
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
