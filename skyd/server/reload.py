"""SIGHUP: read the configuration again and apply what can change while requests run.

Nothing is stopped: listeners, sessions, queued and running requests carry on; the new
limits bind what comes next. What only a restart can change (the state directory, the
sockets, the slots, the infra) is named in a warning and kept as it is. A file that does
not load is reported and changes nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Callable

from skyd.identity import UnknownGroup, group_id
from skyd.infra.nodepools import PoolError
from skyd.server.config import Config, ConfigError
from skyd.server.listeners import ListenError, load_certificate

if TYPE_CHECKING:
    from skyd.server.face import Reloadable

log = logging.getLogger("skyd.server.reload")

# Read from the config at each use (the session, the front door, retention): set in place.
LIVE = ("handshake_timeout", "connections_per_user", "max_frame", "handshake_max_frame",
        "retention_hours", "tcp_handshake_timeout", "tcp_auth_failures",
        "tcp_preauth_per_address", "admin_group", "node_pools", "tokens_file", "tls_cert",
        "tls_key", "inflight_bytes", "user_long_slots", "user_pending", "long_timeout",
        "request_log_bytes", "job_log_bytes", "log_level")
# Settled at start-up: a change waits for a restart.
AT_RESTART = ("state_dir", "socket", "socket_group", "long_slots", "short_slots", "calibration",
              "drain_timeout", "kill_grace", "spares", "work_cpu", "ssh_known_hosts", "jobs_parallelism",
              "jobs_recover_after", "http", "tcp", "slurm", "skip_resources_check")


def reload(daemon: Reloadable, load: Callable[[], Config]) -> list[str]:
    """Apply the configuration `load()` reads now; the names of the settings changed."""
    try:
        new = load()
        admin_gid = group_id(new.admin_group)
    except (ConfigError, UnknownGroup) as e:
        log.error("reload: configuration not applied: %s", e)
        return []
    cfg = daemon.config
    changed = [f.name for f in dataclasses.fields(Config)
               if getattr(cfg, f.name) != getattr(new, f.name)]
    later = [name for name in changed if name in AT_RESTART]
    if later:
        log.warning("reload: %s changed: applied at the next restart", ", ".join(later))
    # A renewed certificate: TCP's and the HTTP side's (one setting for both).
    contexts = [c for c in (daemon.front.tls if daemon.front is not None else None,
                            daemon.http_tls) if c is not None]
    if contexts and new.tls:
        assert new.tls_cert is not None and new.tls_key is not None
        try:
            for ctx in contexts:
                load_certificate(ctx, new.tls_cert, new.tls_key)
        except ListenError as e:
            log.error("reload: %s; the certificate in use stays", e)
            new.tls_cert, new.tls_key = cfg.tls_cert, cfg.tls_key
    for name in LIVE:
        setattr(cfg, name, getattr(new, name))
    _apply(daemon, cfg, admin_gid)
    live = [name for name in changed if name not in AT_RESTART]
    log.info("reload: configuration read again%s", f"; applied: {', '.join(live)}" if live else
             ": nothing changed that applies now")
    return live


def _apply(daemon: Reloadable, cfg: Config, admin_gid: int | None) -> None:
    """Hand the settings to the components that keep their own copy."""
    daemon.set_admin_gid(admin_gid)
    logging.getLogger().setLevel(cfg.log_level.upper())
    daemon.frame_budget.cap = cfg.inflight_bytes
    s = daemon.scheduler
    s.user_long_slots = s.long_queue.user_slots = (
        max(1, daemon.long_slots // 2) if cfg.user_long_slots is None else cfg.user_long_slots)
    s.user_pending = cfg.user_pending
    s.long_timeout = s.runner.long_timeout = cfg.long_timeout
    s.log_limit = s.runner.log_limit = cfg.request_log_bytes
    daemon.runners.local.log_limit = daemon.runners.slurm.log_limit = max(0, cfg.job_log_bytes)
    daemon.pools.path = cfg.node_pools_path
    daemon.tokens.path = cfg.tokens_path
    try:
        daemon.pools.get()                  # read again now: a broken file is said now
    except PoolError as e:
        log.error("reload: node pools: %s (the pools last read stay in use)", e)
    try:
        daemon.tokens.refresh()
    except Exception as e:  # noqa: BLE001 - a damaged file must not stop the reload
        log.error("reload: tokens: %s", e)
