"""The daemon: startup() -> serve() -> shutdown().

`Daemon.__init__` only stores the config; startup() does the work. It first reads what
sizes it (the hardware, the calibration) and the admin group, so that a mistake there is
reported before anything is touched; then the order matters: the state directory is
locked (one daemon per state directory, refused before anything is touched), what a
crashed previous run left is killed, resources are checked, the components are built
(each infra kind's job runner from the config: nothing is configured at import), the
schema migrated, what was pending is queued again and what was running reconciled — only
then does the socket accept anyone. Each connection is served by skyd.server.connections
(a Session each) and the periodic loops (retention, autostop, the Slurm watch) run in
skyd.server.housekeeping: both are started here and stopped in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import ssl
import time
from pathlib import Path
from typing import Callable

from skyd import __version__, protocol
from skyd.server import systemd

from skyd.sizing import cpugroups
from skyd.sizing.cpugroups import CpuGroups
from skyd.sizing.hardware import Hardware, detect
from skyd.sizing.calibration import Calibration, load_calibration
from skyd.sizing.slots import check_minimum, size_slots
from skyd.sizing.units import format_size
from skyd.server.config import Config
from skyd.infra import Runners
from skyd.infra.local import LocalRunner, scopes
from skyd.infra.slurm import SlurmRunner
from skyd.infra.ssh import SshClient, SshRunner, control_dir as ssh_control_dir
from skyd.infra.ssh.masters import close_masters
from skyd.managed.controller import JobsController
from skyd.infra.nodepools import NodePools, PoolError
from skyd.identity import Caller, group_id, is_admin
from skyd.server.connections import Connections
from skyd.server.housekeeping import Housekeeping
from skyd.server.idempotency import Submissions
from skyd.server.listeners import (bind_tcp, bind_unix, format_address,
                                   require_tls_off_loopback, tls_context)
from skyd.server.remote import FrontDoor
from skyd.server.tokens import Tokens
from skyd.server.services import Services
from skyd.server.serverinfo import server_info
from skyd.server.watchers import Hub
from skyd.server.statelock import AlreadyRunning, lock_state_dir
from skyd.requests.scheduler import Scheduler
from skyd.server.session import FrameBudget
from skyd.clusters.claims import Caps
from skyd.clusters.service import Clusters
from skyd.requests.request import uncapped_uids
from skyd.store import Store
from skyd.requests.pool import WorkerPool
from skyd.requests.reaping import reap_previous

log = logging.getLogger("skyd")

# What long requests do, registered with skyd.requests.context in each worker.
LONG_HANDLER_MODULES = ["skyd.clusters.lifecycle", "skyd.infra.local", "skyd.infra.ssh"]


class StartupError(RuntimeError):
    pass


class Daemon:
    # Read and built by startup() (_read_config, _build): none of them exists before it.
    hardware: Hardware
    calibration: Calibration
    long_slots: int
    short_slots: int
    slots_source: str
    store: Store
    pools: NodePools
    ssh: SshClient            # the daemon's own ssh (as each node's owner on per-user pools)
    runners: Runners
    state: Clusters
    pool: WorkerPool
    scheduler: Scheduler
    jobs: JobsController
    services: Services
    tokens: Tokens            # bearer tokens for TCP
    submissions: Submissions  # idempotency keys of submissions
    connections: Connections  # the sessions of both listeners, counted per uid
    housekeeping: Housekeeping  # retention, autostop, the Slurm watch
    cpu: CpuGroups | None     # where work yields the CPU to the daemon (None: by nice only)

    def __init__(self, config: Config):
        """Only the config: no I/O. startup() detects, reads, builds and starts."""
        self.config = config
        self.version = __version__
        self.started_at = time.time()
        self._admin_gid: int | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tcp_server: asyncio.AbstractServer | None = None
        self.front: FrontDoor | None = None     # TCP's authentication, when TCP is on
        self.http_tls: ssl.SSLContext | None = None   # the HTTP side's, off loopback
        self.tcp_listening = ""                 # HOST:PORT of the TCP listener ("": none)
        # Reads the configuration again on SIGHUP (set by `skyd serve`: flags, file, env).
        self.load_config: Callable[[], Config] = lambda: config
        self.frame_budget = FrameBudget(config.inflight_bytes)
        self.stopping = asyncio.Event()
        self._lock_fd: int | None = None
        self._stack = contextlib.AsyncExitStack()

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether the socket takes connections: recovery is done, no drain has begun."""
        return self._server is not None and self._server.is_serving()

    @property
    def locked(self) -> bool:
        """Whether this daemon holds its state directory (and so may shut anything down)."""
        return self._lock_fd is not None

    async def startup(self) -> None:
        """Take each resource in order and push how to give it back on one exit stack:
        shutdown() unwinds it in reverse, also after a start-up that failed half-way."""
        cfg, stack = self.config, self._stack
        self._read_config()
        # Private by default: the database holds every request (secrets included) and the
        # logs their output. The state dir stays traversable so that people can reach
        # their own local clusters (each 0700, theirs) and, by default, the socket (0600).
        os.umask(0o077)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        # First of all: one daemon per state directory. A second one stops here, before
        # migrations, recovery or anything else has touched the directory.
        try:
            self._lock_fd = lock_state_dir(cfg.state_dir)
        except AlreadyRunning as e:
            raise StartupError(str(e)) from None
        stack.callback(self._unlock)
        # Then nothing of a crashed previous run may go on beside what we re-run.
        workers_dir = cfg.state_dir / "workers"
        try:
            killed = await asyncio.to_thread(reap_previous, workers_dir)
        except RuntimeError as e:
            raise StartupError(str(e)) from None
        if killed:
            log.warning("killed %d processes left by the previous run (workers, their setups, "
                        "the forkserver): %s", len(killed), " ".join(map(str, sorted(killed))))
        # And no ssh master of it (nor the commands through them); ours end at the stop.
        closed = await asyncio.to_thread(close_masters, cfg.state_dir / "ssh")
        if closed:
            log.warning("closed %d ssh masters left by the previous run", closed)
        stack.push_async_callback(asyncio.to_thread, close_masters, cfg.state_dir / "ssh")
        self._enter_cpu_groups()
        if not cfg.skip_resources_check:
            problems = check_minimum(self.hardware)
            if problems:
                raise StartupError("not enough resources for team use:\n  " +
                                   "\n  ".join(problems) +
                                   "\n(start anyway with --skip-resources-check)")
        os.chmod(cfg.state_dir, 0o711)
        cfg.logs_dir.mkdir(parents=True, exist_ok=True)
        for path in (cfg.db_path, *(cfg.db_path.with_name(cfg.db_path.name + s)
                                    for s in ("-wal", "-shm"))):
            if path.exists():
                os.chmod(path, 0o600)       # tighten files made by an older version
        self._build(workers_dir)
        try:
            self.pools.get()                # a broken pool file is reported now, not later
        except PoolError as e:
            raise StartupError(str(e)) from None
        os.makedirs(self.ssh.control_dir, mode=0o700, exist_ok=True)

        # HTTP (--http; off by default) before recovery: /readyz says "starting" through it.
        from skyd.server.http import serving
        side = await stack.enter_async_context(serving(self))
        self.http_tls = getattr(side, "tls", None)
        await self.store.open()
        stack.push_async_callback(self.store.close)
        await self.jobs.load()
        await self.state.load()
        stack.push_async_callback(self.state.close)
        stack.push_async_callback(self._end_sessions)    # after the drain below
        await self.pool.start()
        stack.push_async_callback(self.scheduler.shutdown, cfg.drain_timeout)  # drain, workers
        requeued, rerun, failed = await self.scheduler.recover()
        if requeued or rerun or failed:
            log.info("recovered requests: %d queued again, %d re-run, %d failed as interrupted",
                     requeued, rerun, failed)
        resumed = self.jobs.resume()
        stack.push_async_callback(self.jobs.close)
        if resumed:
            log.info("managed jobs: %d resumed from their persisted state", resumed)

        sock = systemd.adopted_socket()
        if sock is None:
            sock = bind_unix(cfg.socket_path, cfg.socket_group)
            stack.callback(_unlink_quietly, cfg.socket_path)
        self._server = await asyncio.start_unix_server(self.connections.serve, sock=sock)
        stack.callback(self._stop_listening)
        await self._listen_tcp()
        for task in self.housekeeping.start():      # retention, autostop, the Slurm watch
            stack.callback(task.cancel)
        where = str(cfg.socket_path) + (f" and tcp {self.tcp_listening}"
                                        f"{' (TLS)' if self.front and self.front.tls else ''}"
                                        if self.tcp_listening else "")
        log.info("skyd %s listening on %s: %d long slots, %d short slots (%s)", self.version,
                 where, self.long_slots, self.short_slots, self.slots_source)
        systemd.notify(f"READY=1\nSTATUS=listening on {where}")
        watchdog = systemd.start_watchdog()
        if watchdog is not None:
            stack.callback(watchdog.cancel)

    def _read_config(self) -> None:
        """Reads only: this machine's CPUs and memory (SKYD_CPUS, SKYD_MEMORY), the
        calibration and so the number of slots, the admin group's id."""
        cfg = self.config
        self.hardware = hw = detect()
        self.calibration = load_calibration(cfg.calibration_path)
        slots = size_slots(hw, self.calibration)
        self.long_slots = cfg.long_slots or slots.long
        self.short_slots = cfg.short_slots or slots.short
        self.slots_source = (f"{hw.cpus:g} CPUs ({hw.cpu_source}), "
                             f"{format_size(hw.memory_bytes)} "
                             f"({hw.memory_source}); {self.calibration.source}")
        self._admin_gid = group_id(cfg.admin_group)

    def _enter_cpu_groups(self) -> None:
        """The daemon into its cpu cgroup, beside the one where work yields to it (found
        once, here, and logged); None where not used: work yields by nice alone."""
        mode = self.config.work_cpu
        cpu, why = (cpugroups.detect(self.config.state_dir, host_wide=mode == "background")
                    if mode != "nice" else (None, "work_cpu is nice"))
        if cpu is not None:
            try:
                cpu.enter()
            except OSError as e:
                cpu, why = None, f"the cpu cgroup cannot be used: {e}"
        self.cpu = cpu
        if cpu is None:
            log.info("work yields the CPU to the daemon by nice only: %s", why)
        else:
            log.info("work yields the CPU to %s in an idle cpu cgroup: %s",
                     "everything on the host" if cpu.host_wide else "the daemon", cpu.work)
            self._stack.callback(cpu.leave)

    def _build(self, workers_dir: Path) -> None:
        """The components, each handed what it needs; their own I/O comes after, in
        startup()'s order."""
        cfg, hw = self.config, self.hardware
        self.store = Store(cfg.db_path)
        self.tokens = Tokens(cfg.tokens_path)
        self.submissions = Submissions(self.store)
        self.pools = NodePools(cfg.node_pools_path)
        self.ssh = SshClient(ssh_control_dir(cfg.state_dir, "daemon"),
                             str(cfg.ssh_known_hosts or ""))
        # A local node is this host: it offers the CPUs detected (cgroup-aware); its jobs
        # run in systemd scopes where systemd runs the host (found once, here, and logged).
        self.runners = Runners(local=LocalRunner(hw.cpus, cfg.job_log_bytes, scopes.detect(),
                                                  self.cpu),
                               ssh=SshRunner(self.ssh, on_health=self._node_health),
                               slurm=SlurmRunner(cfg.slurm, str(cfg.state_dir), cfg.job_log_bytes,
                                                 self.ssh))
        self.state = Clusters(self.store, str(cfg.state_dir), hw, self.is_admin, self.runners,
                              self.pools, self.ssh.known_hosts,
                              Caps(cfg.max_gpus_per_user, cfg.max_clusters_per_user,
                                   uncapped_uids()))
        self.pool = WorkerPool(spares=cfg.spares, run_dir=workers_dir,
                               handlers=LONG_HANDLER_MODULES, cpu=self.cpu)
        self.scheduler = Scheduler(
            self.store, self.pool, self.state.workload, cfg.logs_dir, self.long_slots,
            self.short_slots, cfg.kill_grace,
            user_long_slots=(max(1, self.long_slots // 2) if cfg.user_long_slots is None
                             else cfg.user_long_slots),
            user_pending=cfg.user_pending, long_timeout=cfg.long_timeout,
            log_limit=cfg.request_log_bytes)
        self.jobs = JobsController(self.store, self.scheduler, self.state, cfg.managed_logs_dir,
                                   self.is_admin,
                                   cfg.jobs_parallelism or max(1, self.long_slots // 2),
                                   cfg.jobs_recover_after)
        self.services = Services(config=cfg, store=self.store, scheduler=self.scheduler,
                                 state=self.state, jobs=self.jobs, ssh=self.ssh, info=self.info,
                                 version=self.version, tokens=self.tokens,
                                 submissions=self.submissions, watchers=Hub(self.state.registry))
        self.connections = Connections(cfg, self.services, self.frame_budget,
                                       lambda: self._admin_gid, self.scheduler.uncapped)
        self.tokens.on_removed(self.connections.by_token.revoked)   # revoked: sessions end
        self.housekeeping = Housekeeping(cfg, self.store, self.scheduler, self.state,
                                         self.runners, self.is_admin)

    def _node_health(self, host: str, ok: bool, reason: str) -> None:
        """What the ssh runner learns of a node, for the registry (built after the runner)."""
        self.state.hosts.node_health(host, ok, reason)

    async def serve(self) -> None:
        await self.stopping.wait()

    async def shutdown(self) -> None:
        """Give back, in reverse, what startup() took: stop listening, stop the jobs
        controller, drain and stop the requests and workers, end the sessions, close the
        registry and the store, free the state directory."""
        systemd.notify("STOPPING=1")
        log.info("shutting down: no new requests; waiting up to %.0fs for running ones",
                 self.config.drain_timeout)
        await self._stack.aclose()
        log.info("stopped")

    async def _listen_tcp(self) -> None:
        """TCP beside the Unix socket: adopted from skyd.socket or bound as `tcp` says; a
        token on every connection (skyd.server.remote), TLS when configured — required
        off loopback, checked here too for an adopted socket."""
        cfg = self.config
        sock = systemd.adopted_tcp()
        if sock is None:
            if cfg.tcp_address is None:
                return
            sock = bind_tcp(*cfg.tcp_address)
        try:
            host, port = sock.getsockname()[:2]
            require_tls_off_loopback(host, port, cfg.tls)
            tls = None
            if cfg.tls:
                assert cfg.tls_cert is not None and cfg.tls_key is not None
                tls = tls_context(cfg.tls_cert, cfg.tls_key)
        except BaseException:
            sock.close()
            raise
        self.front = FrontDoor(cfg, self.tokens, lambda: self._admin_gid, tls)
        # TLS by the listener, from the first byte (a handshake started later can lose the
        # bytes the plain stream already read). An explicit handshake timeout: uvloop 0.23
        # aborts handshakes at once without one.
        self._tcp_server = await asyncio.start_server(
            functools.partial(self.connections.serve, front=self.front), sock=sock, ssl=tls,
            ssl_handshake_timeout=(cfg.tcp_handshake_timeout if cfg.tcp_handshake_timeout > 0
                                   else 60.0) if tls else None)
        self.tcp_listening = format_address(host, port)

    def _stop_listening(self) -> None:
        for server in (self._server, self._tcp_server):
            if server is not None:
                server.close()
        self.scheduler.accepting = False

    async def _end_sessions(self) -> None:
        await self.connections.end()
        for server in (self._server, self._tcp_server):
            if server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 1.0)

    async def reload(self) -> list[str]:
        """SIGHUP: apply the configuration as it reads now (skyd.server.reload)."""
        from skyd.server.reload import reload
        return reload(self, self.load_config)

    def set_admin_gid(self, gid: int | None) -> None:
        self._admin_gid = gid

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)       # the state directory is free for the next daemon
            self._lock_fd = None

    # ---- asked by the components ---------------------------------------------------------

    def is_admin(self, uid: int) -> bool:
        return is_admin(uid, self._admin_gid)

    def info(self, caller: Caller) -> protocol.ServerInfo:
        return server_info(caller, self.config, self.scheduler, version=self.version,
                           started_at=self.started_at, slots_source=self.slots_source,
                           tcp=self.tcp_listening,
                           tls=self.front is not None and self.front.tls is not None)

def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)

