"""Placement: which hosts a cluster's nodes go to, and why a request must wait or can
never run. Pure functions over the ledger (skyd.clusters.ledger): no I/O, no clock.

Best fit: of the hosts that fit a node now, the one with the fewest free GPUs of the
model asked for (then the earliest in its pool), so that 1-GPU work fills a box that is
already in use and an empty 8-GPU box stays whole for 8-GPU work. Work that asks for no
GPU prefers hosts without free GPUs. An ssh cluster that asks for nothing (no CPUs,
memory or GPUs) gets a whole host, as a SkyPilot node pool gives one.
"""

from __future__ import annotations

from dataclasses import dataclass

from skyd.clusters.ledger import LOCAL, Host, Ledger
from skyd.protocol import HeldSlice
from skyd.taskspec import GpuAsk, Task, infra_kind, parse_accelerators, parse_amount

SHOWN_HOSTS = 3        # hosts named in a waiting reason; the rest are counted


@dataclass(frozen=True)
class Demand:
    """What a cluster asks of each of its nodes, and where they may go."""
    pool: str                            # "local", or the ssh pool
    num_nodes: int = 1
    cpus: float = 0.0                    # per node (0: none reserved)
    memory_bytes: int = 0
    options: tuple[GpuAsk, ...] = ()     # GPU alternatives, in order of preference
    exclusive: bool = False              # a whole host per node (ssh, nothing asked)
    pinned: tuple[str, ...] = ()         # host of each rank (a stopped cluster's own hosts)

    @property
    def same_host(self) -> bool:
        """Every node on one host (local: nodes are directories of this host)."""
        return self.pool == LOCAL

    @property
    def gpus(self) -> int:
        """GPUs per node (of the first option: alternatives ask the same work)."""
        return self.options[0].count if self.options else 0

    @property
    def empty(self) -> bool:
        return not (self.cpus or self.memory_bytes or self.options or self.exclusive)

    def describe(self) -> str:
        if self.exclusive:
            return "a whole host" if self.num_nodes == 1 else f"{self.num_nodes} whole hosts"
        what = " or ".join(f"{o.count}× {o.model}" for o in self.options)
        if not what:
            parts = ([f"{self.cpus:g} CPUs"] if self.cpus else []) + \
                ([f"{self.memory_bytes / 2**30:g} GiB"] if self.memory_bytes else [])
            what = ", ".join(parts) or "a whole host"
        return what + (f" on each of {self.num_nodes} nodes" if self.num_nodes > 1 else "")


def demand_of(task: Task) -> Demand | None:
    """The demand of a task's cluster; None where the ledger has no say (Slurm)."""
    kind, pool = infra_kind(task.resources.infra)
    if kind == "slurm":
        return None
    cpus = parse_amount("cpus", task.resources.cpus)
    memory = parse_amount("memory", task.resources.memory)
    options = parse_accelerators(task.resources.accelerators)
    d = Demand(pool=pool if kind == "ssh" and pool else LOCAL, num_nodes=task.num_nodes,
               cpus=cpus.value if cpus else 0.0,
               memory_bytes=int(memory.value * 2**30) if memory else 0, options=options)
    if kind == "ssh" and d.empty:
        d = Demand(pool=d.pool, num_nodes=d.num_nodes, exclusive=True)
    return d


def resolve(ledger: Ledger, model: str) -> str:
    """The model as detected, for a task's spelling of it (case does not matter)."""
    return ledger.models.get(model.lower(), model)


def surely_blocked(ledger: Ledger, d: Demand) -> bool:
    """A quick no: a GPU demand more than any one host of its pool has free (pinned and
    same-host demands are not judged here)."""
    if not d.options or d.pinned or d.same_host or d.exclusive:
        return False
    return all(ledger.most_free(d.pool, resolve(ledger, o.model)) < o.count for o in d.options)


def candidates(ledger: Ledger, d: Demand) -> list[Host]:
    if d.pinned:
        return [ledger.hosts[k] for k in dict.fromkeys(d.pinned) if k in ledger.hosts]
    return sorted((h for h in ledger.hosts.values() if d.pool in h.pools and not h.gone),
                  key=lambda h: h.order)


# ---- fitting now ------------------------------------------------------------------------

def place(ledger: Ledger, d: Demand, fenced: frozenset[str] = frozenset(),
          avoid: frozenset[str] = frozenset()) -> list[HeldSlice] | None:
    """The slices of a best fit now, or None. `fenced`: hosts kept for another request;
    `avoid`: hosts tried last (they did not answer)."""
    if d.exclusive:
        return _place_whole(ledger, d, fenced, avoid)
    if not d.options:
        return _place_sized(ledger, d, None, 0, fenced)
    for option in d.options:
        got = _place_sized(ledger, d, resolve(ledger, option.model), option.count, fenced)
        if got is not None:
            return got
    return None


def _place_whole(ledger: Ledger, d: Demand, fenced: frozenset[str],
                 avoid: frozenset[str]) -> list[HeldSlice] | None:
    free = [h for h in candidates(ledger, d)
            if not h.holdings and h.key not in fenced and not h.gone]
    if d.pinned:
        if len(free) < len(set(d.pinned)):
            return None
        return [_slice(ledger.hosts[k], rank, d, None, 0, whole=True)
                for rank, k in enumerate(d.pinned)]
    free.sort(key=lambda h: h.key in avoid)     # stable: pool order
    if len(free) < d.num_nodes:
        return None
    return [_slice(h, rank, d, None, 0, whole=True) for rank, h in enumerate(free[:d.num_nodes])]


def _place_sized(ledger: Ledger, d: Demand, model: str | None, count: int,
                 fenced: frozenset[str]) -> list[HeldSlice] | None:
    if d.same_host or d.pinned:
        return _place_each(ledger, d, model, count, fenced)
    chosen: list[Host] = []
    if model is None:
        # No GPU: hosts with the fewest free GPUs first (keep GPU boxes for GPU work),
        # then the fullest in CPUs.
        every = [h for h in candidates(ledger, d) if h.key not in fenced and not h.gone]
        hosts = [h for h in every if h.fits_size(d.cpus, d.memory_bytes)]
        hosts.sort(key=lambda h: (len(h.gpus) - len(h.used_gpus),
                                  (h.cpus - h.used_cpus) if h.cpus else float("inf"), h.order))
        chosen = hosts[:d.num_nodes]
        if len(chosen) < d.num_nodes and every and all(_too_small(h, d) for h in every):
            # No host is big enough, ever: its nodes go where the pool lists them, and
            # the node's own check says which is too small (skyd.clusters.lifecycle).
            chosen = every[:d.num_nodes]
    else:
        for _, bucket in ledger.with_free(d.pool, model, count):
            fits = [h for h in bucket if h.key not in fenced and not h.gone
                    and h.fits_size(d.cpus, d.memory_bytes)]
            if d.num_nodes - len(chosen) == 1 and fits:
                chosen.append(min(fits, key=lambda h: h.order))
            else:
                chosen += sorted(fits, key=lambda h: h.order)[:d.num_nodes - len(chosen)]
            if len(chosen) >= d.num_nodes:
                break
    if len(chosen) < d.num_nodes:
        return None
    return [_slice(h, rank, d, model, count) for rank, h in enumerate(chosen)]


def _too_small(h: Host, d: Demand) -> bool:
    """Is the host smaller than one node of the demand (its size known)?"""
    return bool(h.cpus and d.cpus > h.cpus or h.memory_bytes and d.memory_bytes > h.memory_bytes)


def _place_each(ledger: Ledger, d: Demand, model: str | None, count: int,
                fenced: frozenset[str]) -> list[HeldSlice] | None:
    """Nodes on given hosts (local: every node on this host; pinned: each rank's own),
    several nodes on one host taking their slices one after another."""
    hosts = list(d.pinned) if d.pinned else [LOCAL] * d.num_nodes
    taken: dict[str, list[int]] = {}
    need: dict[str, tuple[float, int]] = {}
    out = []
    for rank, key in enumerate(hosts):
        host = ledger.hosts.get(key)
        if host is None or host.gone or key in fenced:
            return None
        cpus, memory = need.get(key, (0.0, 0))
        need[key] = (cpus + d.cpus, memory + d.memory_bytes)
        if not host.fits_size(*need[key]):
            return None
        gpus: list[int] = []
        if model is not None:
            if host.error:
                return None      # its GPUs could not be detected: none is given out there
            free = [i for i in host.free_gpus(model) if i not in taken.get(key, [])]
            if len(free) < count:
                return None
            gpus = free[:count]
            taken.setdefault(key, []).extend(gpus)
        out.append(HeldSlice(rank=rank, host=key, cpus=d.cpus, memory_bytes=d.memory_bytes,
                             gpus=gpus, gpu_model=model or ""))
    return out


def _slice(h: Host, rank: int, d: Demand, model: str | None, count: int,
           whole: bool = False) -> HeldSlice:
    if whole:
        # A whole host holds all its GPUs too: nobody else may be given one.
        return HeldSlice(rank=rank, host=h.key, gpus=sorted(h.gpus), exclusive=True,
                         gpu_model=next(iter(h.models()), "") if len(h.models()) == 1 else "")
    gpus = h.free_gpus(model)[:count] if model else []
    return HeldSlice(rank=rank, host=h.key, cpus=d.cpus, memory_bytes=d.memory_bytes,
                     gpus=gpus, gpu_model=model or "")


# ---- could it ever fit? ------------------------------------------------------------------

def never_fits(ledger: Ledger, d: Demand) -> str:
    """Why no host could ever hold it, even with nothing else placed ("" when some could,
    or when a candidate host's GPUs are not known yet). Names what exists."""
    hosts = candidates(ledger, d)
    where = "local (the daemon's host)" if d.pool == LOCAL else f"pool {d.pool!r}"
    if not hosts:
        return f"{where} has no hosts"
    if not d.options:
        return ""      # CPUs and memory: each node's own check names a node too small
    if any(not h.probed for h in hosts):
        return ""      # not all known yet
    for option in d.options:
        model = resolve(ledger, option.model)
        sizes = sorted((h.count(model) for h in hosts), reverse=True)
        if d.same_host and sizes and sizes[0] >= option.count * d.num_nodes:
            return ""
        if not d.same_host and len([n for n in sizes if n >= option.count]) >= d.num_nodes:
            return ""
    return f"{where} can never give {_asked(d)}{_per(d)}: {what_exists(hosts)}"


def what_exists(hosts: list[Host]) -> str:
    """"it has 8× H100 on 10.0.0.5:22, 2× A100 on 10.0.0.6:22" (the biggest first)."""
    found = []
    for h in hosts:
        counts: dict[str, int] = {}
        for g in h.gpus.values():
            counts[g.model] = counts.get(g.model, 0) + 1
        found += [(n, m, h.key) for m, n in counts.items()]
    if not found:
        return "it has no GPUs"
    found.sort(key=lambda f: (-f[0], f[1], f[2]))
    shown = ", ".join(f"{n}× {m} on {k}" for n, m, k in found[:SHOWN_HOSTS])
    more = f" and {len(found) - SHOWN_HOSTS} more" if len(found) > SHOWN_HOSTS else ""
    return f"it has {shown}{more}"


def _per(d: Demand) -> str:
    if d.num_nodes == 1:
        return ""
    return f" to each of {d.num_nodes} nodes" + (" on one host" if d.same_host else
                                                  " on distinct hosts")


def _asked(d: Demand) -> str:
    return " or ".join(f"{o.count}× {o.model}" for o in d.options)


# ---- why it waits --------------------------------------------------------------------------

def why_waiting(ledger: Ledger, d: Demand, fenced: frozenset[str] = frozenset()) -> str:
    """"waiting for 2× H100: 0 of 8 free on 10.0.0.5:22, 1 of 8 free on ..." — what the
    request needs and what its candidate hosts have free now."""
    hosts = candidates(ledger, d)
    head = f"waiting for {d.describe()}"
    unknown = [h.key for h in hosts if not h.probed and not h.error]
    failing = [f"{h.key}: {h.error}" for h in hosts if h.error]
    notes = []
    if d.exclusive:
        free = sum(not h.holdings for h in hosts)
        notes.append(f"{free} of {len(hosts)} hosts free")
    elif d.options:
        model = resolve(ledger, d.options[0].model)
        rows = [(len(h.free_gpus(model)), h.count(model), h) for h in hosts if h.count(model)]
        rows.sort(key=lambda r: (-r[0], r[2].order))
        notes += [f"{free} of {total} free on {h.key}" + (" (kept for a request waiting "
                                                          "longer)" if h.key in fenced else "")
                  for free, total, h in rows[:SHOWN_HOSTS]]
        if len(rows) > SHOWN_HOSTS:
            notes.append(f"{len(rows) - SHOWN_HOSTS} more hosts")
    else:
        for h in hosts[:SHOWN_HOSTS]:
            if h.cpus:
                notes.append(f"{max(0.0, h.cpus - h.used_cpus):g} of {h.cpus:g} CPUs free on {h.key}")
    if unknown:
        notes.append(f"GPUs not detected yet on {', '.join(unknown[:SHOWN_HOSTS])}")
    if failing:
        notes.append("; ".join(failing[:SHOWN_HOSTS]))
    return head + (": " + ", ".join(notes) if notes else "")
