"""The daemon as the parts it starts see it. The HTTP side (skyd.server.http) and the
SIGHUP reload (skyd.server.reload) are handed the Daemon and read it through these
Protocols: they name what they use, and neither imports the daemon that imports them.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Protocol

from skyd.infra import Runners
from skyd.infra.nodepools import NodePools
from skyd.requests.scheduler import Scheduler
from skyd.server.config import Config
from skyd.server.connections import Connections
from skyd.server.remote import FrontDoor
from skyd.server.services import Services
from skyd.server.session import FrameBudget
from skyd.server.tokens import Tokens


class Served(Protocol):
    """What the HTTP side reads: the settings and services, the sessions and their frame
    budget (for /metrics), who is an admin, and whether the daemon takes requests yet."""

    config: Config
    services: Services
    tokens: Tokens
    scheduler: Scheduler
    connections: Connections
    frame_budget: FrameBudget
    stopping: asyncio.Event

    def is_admin(self, uid: int) -> bool: ...

    @property
    def listening(self) -> bool: ...


class Reloadable(Protocol):
    """What a reload changes in place: the settings, the admin group, the certificates in
    use, and the components that keep their own copy of a limit or a path."""

    config: Config
    front: FrontDoor | None
    http_tls: ssl.SSLContext | None
    frame_budget: FrameBudget
    scheduler: Scheduler
    long_slots: int
    runners: Runners
    pools: NodePools
    tokens: Tokens

    def set_admin_gid(self, gid: int | None) -> None: ...
