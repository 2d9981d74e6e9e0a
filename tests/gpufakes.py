"""Fake GPUs for tests: an `nvidia-smi` script that answers the daemon's query
(`--query-gpu=index,name,memory.total --format=csv,noheader,nounits`) with the GPUs a test
gives it, from a file beside it, so a test can change them (a host that shrank) or make
it fail (no driver) while the daemon runs.

    fake = FakeGpus(tmp / "local-bin", [("H100", 8)])    # put fake.bin first on PATH

`GpuSshHosts` are tests/sshd.py's loopback hosts, each with its own fake: every host shares
this machine's filesystem, so each gets a directory of its own put first on the PATH of
its ssh sessions (sshd's SetEnv).
"""

from __future__ import annotations

import os
from pathlib import Path

from sshd import SshHosts

NAMES = {"H100": ("NVIDIA H100 80GB HBM3", 81559), "A100": ("NVIDIA A100-SXM4-40GB", 40960),
         "L4": ("NVIDIA L4", 23034)}

SCRIPT = """#!/bin/sh
# A fake nvidia-smi (tests/gpufakes.py): the GPUs in gpus.csv beside it.
dir=$(dirname "$0")
if [ -e "$dir/fail" ]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
  exit 9
fi
cat "$dir/gpus.csv"
"""


class FakeGpus:
    def __init__(self, bin_dir: Path, gpus: list[tuple[str, int]]):
        self.bin = Path(bin_dir)
        self.bin.mkdir(parents=True, exist_ok=True)
        os.chmod(self.bin, 0o755)
        script = self.bin / "nvidia-smi"
        script.write_text(SCRIPT)
        os.chmod(script, 0o755)
        self.set(gpus)

    def set(self, gpus: list[tuple[str, int]]) -> None:
        """[(model, count)]: indices from 0, in order."""
        lines, index = [], 0
        for model, count in gpus:
            name, mib = NAMES.get(model, (f"NVIDIA {model}", 16384))
            for _ in range(count):
                lines.append(f"{index}, {name}, {mib}")
                index += 1
        path = self.bin / "gpus.csv"
        path.write_text("".join(line + "\n" for line in lines))
        os.chmod(path, 0o644)

    def fail(self, failing: bool = True) -> None:
        marker = self.bin / "fail"
        if failing:
            marker.touch()
        else:
            marker.unlink(missing_ok=True)


class GpuSshHosts(SshHosts):
    """Loopback sshd hosts whose sessions find `<host dir>/bin` first on their PATH."""

    def _sshd_config(self, ip: str, port: int, d: Path, use_pam: bool) -> str:
        return super()._sshd_config(ip, port, d, use_pam).replace(
            "LogLevel ERROR\n", f"LogLevel ERROR\nSetEnv PATH={d}/bin:/usr/local/bin:/usr/bin:/bin\n", 1)

    def fake(self, i: int, gpus: list[tuple[str, int]]) -> FakeGpus:
        host = self.hosts[i]
        os.chmod(host.dir, 0o755)
        return FakeGpus(host.dir / "bin", gpus)
