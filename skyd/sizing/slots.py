"""How many requests may run at once on a machine, and whether it is big enough for a team.

Slot sizing
-----------
A *long* request runs in its own worker process that mostly waits on I/O
(provisioning, ssh, setup scripts); a *short* request is a coroutine in the
daemon's event loop. ``size_slots()`` decides how many of each may run at once::

    reserve = max(1 GiB, 10% of memory)          # the OS and everything else
    usable  = max(0, memory - reserve - daemon_base_bytes)
    long_pool  = floor(usable * 0.5)             # memory for long workers
    short_pool = usable - long_pool              # memory for short requests
    long  = max(1, min(floor(cpus * 16),  long_pool  // long_worker_bytes))
    short = max(8, min(floor(cpus * 256), short_pool // short_request_bytes))

The short pool is the half *not set aside* for long workers, rather than
"usable minus what the long workers actually use". The latter can go down when
memory goes up (one more long worker fits, so ~48 fewer short requests do);
the fixed split guarantees that more CPUs or more memory never yields fewer
slots, for any calibration. With the default calibration the numbers are:
4 CPUs / 8 GiB -> 64 long / 1024 short; 2 CPUs / 24 GiB -> 32 / 512;
1 CPU / 1 GiB -> 1 / 8 (the minimums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from skyd.sizing.calibration import Calibration
from skyd.sizing.hardware import Hardware
from skyd.sizing.units import GiB, format_cpus, format_size

OS_RESERVE_MIN_BYTES = GiB  # never leave less than this for the rest of the VM
OS_RESERVE_FRACTION = 0.10  # ...or this share of memory, whichever is larger
LONG_MEMORY_SHARE = 0.5  # share of usable memory set aside for long workers
LONG_SLOTS_PER_CPU = 16  # long workers mostly wait on I/O, so many per CPU
SHORT_SLOTS_PER_CPU = 256  # short requests are cheap coroutines
MIN_LONG_SLOTS = 1
MIN_SHORT_SLOTS = 8

# --- team-use minimum ------------------------------------------------------
MIN_CPUS = 2
MIN_MEMORY_BYTES = 2 * GiB


@dataclass(frozen=True)
class Slots:
    long: int
    short: int
    long_bound: str  # which limit decided it: "cpu", "memory" or "minimum"
    short_bound: str


def usable_memory(memory_bytes: int, calib: Calibration) -> int:
    """Memory left for requests after the OS reserve and the daemon itself."""
    reserve = max(OS_RESERVE_MIN_BYTES, int(memory_bytes * OS_RESERVE_FRACTION))
    return max(0, memory_bytes - reserve - calib.daemon_base_bytes)


def _bounded(cpu_cap: int, memory_cap: int, minimum: int) -> tuple[int, str]:
    best = min(cpu_cap, memory_cap)
    if best < minimum:
        return minimum, "minimum"
    return best, "cpu" if cpu_cap <= memory_cap else "memory"


def size_slots(hw: Hardware, calib: Calibration) -> Slots:
    """How many long and short requests may run at once (see module docstring)."""
    usable = usable_memory(hw.memory_bytes, calib)
    long_pool = int(usable * LONG_MEMORY_SHARE)
    short_pool = usable - long_pool
    long, long_bound = _bounded(
        math.floor(hw.cpus * LONG_SLOTS_PER_CPU), long_pool // calib.long_worker_bytes, MIN_LONG_SLOTS
    )
    short, short_bound = _bounded(
        math.floor(hw.cpus * SHORT_SLOTS_PER_CPU), short_pool // calib.short_request_bytes, MIN_SHORT_SLOTS
    )
    return Slots(long=long, short=short, long_bound=long_bound, short_bound=short_bound)


def check_minimum(hw: Hardware) -> list[str]:
    """Human messages for each way `hw` falls short of team use; empty if fine."""
    problems = []
    if hw.cpus < MIN_CPUS:
        problems.append(
            f"{format_cpus(hw.cpus)} available, skyd needs at least {MIN_CPUS} for team use "
            f"(short by {round(MIN_CPUS - hw.cpus, 2):g}); found via {hw.cpu_source}"
        )
    if hw.memory_bytes < MIN_MEMORY_BYTES:
        problems.append(
            f"{format_size(hw.memory_bytes)} memory available, skyd needs at least "
            f"{format_size(MIN_MEMORY_BYTES)} for team use "
            f"(short by {format_size(MIN_MEMORY_BYTES - hw.memory_bytes)}); found via {hw.memory_source}"
        )
    return problems
