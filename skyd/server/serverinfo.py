"""What the daemon says of itself (`skyctl api info`): who it is, its slots and queues
now, and the limits it applies (read live: a reload changes some of them).
"""

from __future__ import annotations

import os

from skyd import protocol
from skyd.identity import Caller
from skyd.requests.scheduler import Scheduler
from skyd.server.config import Config


def server_info(caller: Caller, cfg: Config, s: Scheduler, *, version: str, started_at: float,
                slots_source: str, tcp: str, tls: bool) -> protocol.ServerInfo:
    """The daemon now, as `caller` sees it (`tcp`: the TCP listener's HOST:PORT, or "")."""
    return protocol.ServerInfo(
        version=version, protocol=protocol.PROTOCOL_VERSION, pid=os.getpid(),
        started_at=started_at, state_dir=str(cfg.state_dir), socket=str(cfg.socket_path),
        user=caller.user, uid=caller.uid, admin=caller.admin,
        long_slots=s.long_slots, short_slots=s.short.size,
        long_running=len(s.long_running), long_pending=len(s.long_pending),
        short_running=s.short.in_use, short_pending=s.short.waiting,
        slots_source=slots_source, short_peak=s.short.peak, long_peak=s.long_peak,
        limits=limits(cfg, s), node_pools=str(cfg.node_pools_path), tcp=tcp, tls=tls)


def limits(cfg: Config, s: Scheduler) -> protocol.Limits:
    return protocol.Limits(
        handshake_timeout=max(0.0, cfg.handshake_timeout),
        connections_per_user=cfg.connections_per_user, max_frame=cfg.max_frame,
        handshake_max_frame=min(cfg.handshake_max_frame, cfg.max_frame),
        inflight_bytes=cfg.inflight_bytes, user_long_slots=s.user_long_slots,
        user_pending=s.user_pending, long_timeout=s.long_timeout,
        request_log_bytes=s.log_limit, job_log_bytes=max(0, cfg.job_log_bytes),
        tcp_handshake_timeout=cfg.tcp_handshake_timeout,
        tcp_auth_failures=cfg.tcp_auth_failures,
        max_gpus_per_user=cfg.max_gpus_per_user,
        max_clusters_per_user=cfg.max_clusters_per_user)

