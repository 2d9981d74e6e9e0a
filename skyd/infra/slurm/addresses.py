"""Slurm's addresses of its nodes (NodeAddr: SkyPilot's node IPs), asked for while an
allocation starts so that the launch needs no Slurm command once it runs.

Only Slurm's controller knows them (a node's name may not even resolve: NodeAddr is what
Slurm reaches it at), and which nodes the allocation gets is known only once it starts.
So the launch asks for every node of its partition (one `sinfo`, in a thread) as soon as
it has submitted, while Slurm schedules and starts the allocation; the answer serves if
the allocation started soon after (FRESH: an address rarely changes, a cloud node's when
it boots, which takes longer — and its marker carries Slurm's address for it anyway),
else the launch asks again for its own nodes, as it did before.
"""

from __future__ import annotations

import threading
import time

from skyd.infra.slurm.commands import Slurm
from skyd.protocol import SkydError

FRESH = 30.0            # seconds an answer serves after it was asked for


def parse(text: str) -> dict[str, str]:
    """sinfo's `%N|%o` lines: each node's address."""
    found = {}
    for line in text.splitlines():
        name, _, address = line.partition("|")
        if name.strip() and address.strip():
            found[name.strip()] = address.strip()
    return found


def ask(slurm: Slurm, *where: str) -> dict[str, str]:
    """The addresses of the nodes `where` (sinfo's options) selects."""
    return parse(slurm.run("sinfo", "-h", "-N", *where, "-o", "%N|%o").stdout)


class Lookahead:
    """The addresses of a partition's nodes ("": every node), asked for in the background
    from now on."""

    def __init__(self, slurm: Slurm, partition: str):
        self.asked = time.monotonic()
        self.limit = slurm.settings.command_timeout
        self._found: dict[str, str] = {}
        self._thread = threading.Thread(
            target=self._ask, args=(slurm, ["-p", partition] if partition else []),
            name="slurm-addresses", daemon=True)
        self._thread.start()

    def _ask(self, slurm: Slurm, where: list[str]) -> None:
        try:
            self._found = ask(slurm, *where)
        except SkydError:
            pass                    # the launch asks again once the allocation runs

    def of(self, names: list[str]) -> dict[str, str] | None:
        """The addresses of `names` if the answer is fresh and has them all (waiting for
        it while it is still on its way); None otherwise."""
        if time.monotonic() - self.asked > FRESH:
            return None
        self._thread.join(self.limit + 1.0)
        found = self._found
        if any(name not in found for name in names):
            return None
        return {name: found[name] for name in names}
