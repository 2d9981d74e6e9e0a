"""The HTTP side (`skyd serve --http HOST:PORT`, off by default): /metrics for Prometheus,
/healthz and /readyz for probes, and a live read-only dashboard, with the socket's access
rules: on loopback the connecting socket's owner, off loopback TLS and a bearer token (the
TCP listener's), and people see their own work unless they are admins.

This module stays light: aiohttp and prometheus-client are imported only when it is on.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, AsyncContextManager

if TYPE_CHECKING:
    from skyd.server.face import Served


def serving(daemon: Served) -> AsyncContextManager[Any]:
    """What the daemon enters on its exit stack: the HTTP side if configured, else nothing."""
    if daemon.config.http is None:
        return contextlib.nullcontext()
    from skyd.server.http.app import serve
    return serve(daemon)
