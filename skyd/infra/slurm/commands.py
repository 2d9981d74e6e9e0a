"""Running Slurm's commands (sbatch, srun, squeue, scancel, scontrol) with the settings'
environment, a time limit on every call, and Slurm's failures turned into clear errors:
no Slurm commands, munge not running, the controller not answering, a request Slurm
refuses. Blocking (worker side) and async (the daemon's loop)."""

from __future__ import annotations

import asyncio
import subprocess

from skyd.infra.slurm.places import Place
from skyd.infra.slurm.settings import SlurmSettings
from skyd.protocol import ErrorCode, SkydError

# What Slurm says when its controller cannot be reached for now: worth retrying.
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out",
               "Connection refused", "Zero Bytes were transmitted or received",
               "Slurm backup controller in standby mode", "slurmctld is not responding")
# ... and when the job id it is asked about is one it no longer (or never) knew.
UNKNOWN_JOB = ("Invalid job id specified", "Invalid job id")


class SlurmUnreachable(SkydError):
    """Slurm's controller (or munge) did not answer: the same command may work later."""


def say(text: str) -> None:
    """A progress line for the request's log (a worker's stdout), marked as skyd's."""
    print("".join(f"[skyd] {line}\n" for line in text.splitlines()), end="", flush=True)


def last_lines(text: str, n: int = 4) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[-n:])


def failure(cmd: str, rc: int, stderr: str) -> SkydError:
    """Why a Slurm command failed, as the error its caller raises."""
    detail = last_lines(stderr)
    if "munge" in stderr.lower() or "authentication" in stderr.lower():
        # Not retried: munge does not come back by itself.
        return SkydError(ErrorCode.FAILED, f"Slurm cannot authenticate this server "
                         f"({cmd} failed): {detail}",
                         "is munged running on this host, with the cluster's key?")
    if any(s in stderr for s in UNREACHABLE):
        return SlurmUnreachable(ErrorCode.FAILED, f"Slurm's controller does not answer ({cmd}): "
                                f"{detail}", "is slurmctld up? try: scontrol ping")
    return SkydError(ErrorCode.FAILED, f"{cmd} failed (exit status {rc}): "
                     f"{detail or 'no message'}")


def not_found(cmd: str, settings: SlurmSettings) -> SkydError:
    host = f"the login node {settings.login}" if settings.login else "the server"
    where = f"in {settings.bin_dir}" if settings.bin_dir else f"on {host}'s PATH"
    return SkydError(ErrorCode.FAILED, f"Slurm's `{cmd}` command was not found {where}",
                     f"install Slurm's client commands on {host} (Debian: slurm-client), "
                     "or set slurm.bin_dir in the server's config")


def timed_out(cmd: str, timeout: float) -> SlurmUnreachable:
    return SlurmUnreachable(ErrorCode.FAILED, f"Slurm did not answer within {timeout:g}s ({cmd})",
                            "is slurmctld up and munged running? try: scontrol ping")


class Slurm:
    """Slurm's commands as one process uses them (a worker, as the user; the daemon, as
    itself or as a cluster's owner), run where `place` says (places.py)."""

    def __init__(self, settings: SlurmSettings, place: Place):
        self.settings = settings
        self.place = place
        self.calls = 0                      # commands run, for the figures

    def argv(self, cmd: str, *args: str) -> list[str]:
        return [self.settings.command(cmd), *args]

    def run(self, cmd: str, *args: str, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm command; its output (text), or a clear error when `check`."""
        limit = timeout or self.settings.command_timeout
        self.calls += 1
        try:
            p = self.place.run(self.argv(cmd, *args), limit)
        except FileNotFoundError:
            raise not_found(cmd, self.settings) from None
        except subprocess.TimeoutExpired:
            raise timed_out(cmd, limit) from None
        if check and p.returncode != 0:
            raise failure(cmd, p.returncode, p.stderr)
        return p

    async def arun(self, cmd: str, *args: str,
                   timeout: float | None = None) -> tuple[int, str, str]:
        """Run a Slurm command from the loop: (exit status, stdout, stderr); the errors
        `run` raises for a missing command or no answer."""
        limit = timeout or self.settings.command_timeout
        self.calls += 1
        try:
            return await self.place.arun(self.argv(cmd, *args), limit)
        except FileNotFoundError:
            raise not_found(cmd, self.settings) from None
        except asyncio.TimeoutError:
            raise timed_out(cmd, limit) from None
