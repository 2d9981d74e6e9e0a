"""What request handlers may use: the narrow face of the daemon, built once at start-up.

Handlers never see the Daemon itself (its lifecycle, listeners and sessions are not
theirs to touch); each gets this object, the caller and its op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from skyd import protocol
from skyd.clusters.service import Clusters
from skyd.identity import Caller
from skyd.infra.ssh import SshClient
from skyd.managed.controller import JobsController
from skyd.requests.scheduler import Scheduler
from skyd.server.config import Config
from skyd.server.idempotency import Submissions
from skyd.server.tokens import Tokens
from skyd.server.watchers import Hub
from skyd.store import Store


@dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    scheduler: Scheduler
    state: Clusters               # the clusters: registry, job queues, hosts, autostop
    jobs: JobsController          # managed jobs
    ssh: SshClient                # the daemon's ssh: probes of pool hosts (`skyctl infra`)
    info: Callable[[Caller], protocol.ServerInfo]
    version: str
    tokens: Tokens                # bearer tokens for TCP (skyd token)
    submissions: Submissions      # idempotency keys: a retried submission answers the first
    watchers: Hub                 # the watch op's feeds
