"""The daemon: startup() -> serve() -> shutdown().

Start-up order matters: the state directory is locked (one daemon per state directory,
refused before anything is touched), what a crashed previous run left is killed, resources
are checked, the schema migrated, what was pending is queued again and what was running
reconciled — only then does the socket accept anyone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from skyd import __version__, protocol
from skyd.server import systemd

from skyd.sizing import hardware
from skyd.sizing.calibration import load_calibration
from skyd.server.config import Config
from skyd.infra import LOCAL, SSH
from skyd.managed.controller import JobsController
from skyd.infra.nodepools import NodePools, PoolError
from skyd.identity import Caller, caller_for, group_id, is_admin, peer_caller
from skyd.server.listeners import bind_unix
from skyd.server.services import Services
from skyd.requests.scheduler import Scheduler
from skyd.server.session import FrameBudget, Session
from skyd.clusters.registry import ClusterState
from skyd.store import Store
from skyd.requests.pool import WorkerPool, reap_previous

log = logging.getLogger("skyd")

GC_INTERVAL = 3600.0
AUTOSTOP_TICK = 1.0      # seconds between idle checks: a few dict lookups per cluster
HEALTH_INTERVAL = 300.0  # seconds between probes of ssh nodes (one multiplexed `true` each)


LOCK_NAME = "skyd.lock"


# What long requests do, registered with skyd.requests.context in each worker.
LONG_HANDLER_MODULES = ["skyd.clusters.lifecycle", "skyd.infra.local", "skyd.infra.ssh"]


class StartupError(RuntimeError):
    pass


class AlreadyRunning(StartupError):
    """Another daemon holds the state directory: nothing was touched."""


def lock_state_dir(state_dir: Path) -> int:
    """Take the state directory for this process: an exclusive POSIX record lock on
    <state_dir>/skyd.lock, held through the returned descriptor for the daemon's life, with
    our pid written in the file. A record lock belongs to the process: a child forked from
    the daemon (or one it started that outlives it) never holds it, so it is gone as soon
    as the daemon is. The descriptor is close-on-exec; nothing else in the daemon may open
    the file (closing any descriptor of it would drop the lock)."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise AlreadyRunning(f"cannot open the lock file {path}: {e.strerror}") from None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EACCES, errno.EAGAIN):
            raise AlreadyRunning(f"another skyd (pid {holder}) is running on the state directory "
                                 f"{state_dir} (it holds {path}); stop it first or use another "
                                 "--state-dir") from None
        raise AlreadyRunning(f"cannot lock {path}: {e.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Daemon:
    def __init__(self, config: Config):
        self.config = config
        self.version = __version__
        self.started_at = time.time()
        self.store = Store(config.db_path)
        self.hardware = hardware.detect()
        self.calibration = load_calibration(config.calibration_path)
        slots = hardware.size_slots(self.hardware, self.calibration)
        self.long_slots = config.long_slots or slots.long
        self.short_slots = config.short_slots or slots.short
        self.slots_source = (f"{self.hardware.cpus:g} CPUs ({self.hardware.cpu_source}), "
                             f"{hardware.format_size(self.hardware.memory_bytes)} "
                             f"({self.hardware.memory_source}); {self.calibration.source}")
        self.state = ClusterState(self.store, str(config.state_dir), self.hardware,
                                  self.is_admin)
        self.pools = NodePools(config.node_pools_path)
        self.state.pools = self.pools
        self.state.ssh_known_hosts = str(config.ssh_known_hosts or "")
        self.pool = WorkerPool(spares=config.spares, run_dir=config.state_dir / "workers",
                               handlers=LONG_HANDLER_MODULES)
        self.scheduler = Scheduler(
            self.store, self.pool, self.state, config.logs_dir, self.long_slots,
            self.short_slots, config.kill_grace,
            user_long_slots=(max(1, self.long_slots // 2) if config.user_long_slots is None
                             else config.user_long_slots),
            user_pending=config.user_pending, long_timeout=config.long_timeout,
            log_limit=config.request_log_bytes)
        self.jobs = JobsController(self.store, self.scheduler, self.state, config.managed_logs_dir,
                                   self.is_admin,
                                   config.jobs_parallelism or max(1, self.long_slots // 2),
                                   config.jobs_recover_after)
        self._admin_gid = group_id(config.admin_group)
        self.services = Services(config=config, store=self.store, scheduler=self.scheduler,
                                 state=self.state, jobs=self.jobs, info=self.info,
                                 version=self.version)
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[asyncio.Task] = set()
        self.connections: collections.Counter[int] = collections.Counter()   # open, per uid
        self.frame_budget = FrameBudget(config.inflight_bytes)
        self.stopping = asyncio.Event()
        self._lock_fd: int | None = None
        self._stack = contextlib.AsyncExitStack()

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        """Whether this daemon holds its state directory (and so may shut anything down)."""
        return self._lock_fd is not None

    async def startup(self) -> None:
        """Take each resource in order and push how to give it back on one exit stack:
        shutdown() unwinds it in reverse, also after a start-up that failed half-way."""
        cfg, stack = self.config, self._stack
        # Private by default: the database holds every request (secrets included) and the
        # logs their output. The state dir stays traversable so that people can reach
        # their own local clusters (each 0700, theirs) and, by default, the socket (0600).
        os.umask(0o077)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        # First of all: one daemon per state directory. A second one stops here, before
        # migrations, recovery or anything else has touched the directory.
        self._lock_fd = lock_state_dir(cfg.state_dir)
        stack.callback(self._unlock)
        # Then nothing of a crashed previous run may go on beside what we re-run.
        try:
            killed = await asyncio.to_thread(reap_previous, self.pool.run_dir)
        except RuntimeError as e:
            raise StartupError(str(e)) from None
        if killed:
            log.warning("killed %d processes left by the previous run (workers, their setups, "
                        "the forkserver): %s", len(killed), " ".join(map(str, sorted(killed))))
        if not cfg.skip_resources_check:
            problems = hardware.check_minimum(self.hardware)
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
        try:
            self.pools.get()                # a broken pool file is reported now, not later
        except PoolError as e:
            raise StartupError(str(e)) from None
        LOCAL.log_limit = max(0, cfg.job_log_bytes)
        SSH.configure(str(cfg.state_dir / "ssh" / "daemon"), self.state.ssh_known_hosts)
        SSH.on_health = self.state.node_health

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
        self._server = await asyncio.start_unix_server(self._on_connect, sock=sock)
        stack.callback(self._stop_listening)
        loop = asyncio.get_running_loop()
        for task in (loop.create_task(self._gc_loop(), name="retention-gc"),
                     loop.create_task(self._autostop_loop(), name="autostop")):
            stack.callback(task.cancel)
        log.info("skyd %s listening on %s: %d long slots, %d short slots (%s)", self.version,
                 cfg.socket_path, self.long_slots, self.short_slots, self.slots_source)
        systemd.notify(f"READY=1\nSTATUS=listening on {cfg.socket_path}")
        watchdog = systemd.start_watchdog()
        if watchdog is not None:
            stack.callback(watchdog.cancel)

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

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
        self.scheduler.accepting = False

    async def _end_sessions(self) -> None:
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)       # the state directory is free for the next daemon
            self._lock_fd = None

    # ---- connections ---------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        uid: int | None = None
        try:
            caller = peer_caller(writer.get_extra_info("socket"), self._admin_gid)
            if self._admit(caller.uid, writer):
                uid = caller.uid
                await Session(self.services, self.frame_budget, reader, writer, caller).run()
        except asyncio.CancelledError:
            pass
        finally:
            self._sessions.discard(task)
            if uid is not None:
                self.connections[uid] -= 1
                if self.connections[uid] <= 0:
                    del self.connections[uid]

    def _admit(self, uid: int, writer: asyncio.StreamWriter) -> bool:
        """Count the connection against its uid's cap (operators have none), or refuse it."""
        cap, n = self.config.connections_per_user, self.connections[uid]
        if cap and uid not in self.scheduler.uncapped and n >= cap:
            writer.write(protocol.encode_frame(protocol.Error(
                protocol.ErrorCode.BUSY, f"too many connections for you: {n} open (limit "
                                         f"{cap} per user)",
                "close some (followed logs, shells) and retry")))
            writer.close()
            return False
        self.connections[uid] += 1
        return True

    def is_admin(self, uid: int) -> bool:
        return is_admin(uid, self._admin_gid)

    def info(self, caller: Caller) -> protocol.ServerInfo:
        s = self.scheduler
        return protocol.ServerInfo(
            version=self.version, protocol=protocol.PROTOCOL_VERSION, pid=os.getpid(),
            started_at=self.started_at, state_dir=str(self.config.state_dir),
            socket=str(self.config.socket_path), user=caller.user, uid=caller.uid,
            admin=caller.admin, long_slots=s.long_slots, short_slots=s.short.size,
            long_running=len(s.long_running), long_pending=len(s.long_pending),
            short_running=s.short.in_use, short_pending=s.short.waiting,
            slots_source=self.slots_source, short_peak=s.short.peak, long_peak=s.long_peak,
            limits=self.limits())

    def limits(self) -> protocol.Limits:
        cfg, s = self.config, self.scheduler
        return protocol.Limits(
            handshake_timeout=max(0.0, cfg.handshake_timeout),
            connections_per_user=cfg.connections_per_user, max_frame=cfg.max_frame,
            handshake_max_frame=min(cfg.handshake_max_frame, cfg.max_frame),
            inflight_bytes=cfg.inflight_bytes, user_long_slots=s.user_long_slots,
            user_pending=s.user_pending, long_timeout=s.long_timeout,
            request_log_bytes=s.log_limit, job_log_bytes=max(0, cfg.job_log_bytes))

    # ---- autostop --------------------------------------------------------------------------

    async def _autostop_loop(self) -> None:
        last_check = 0.0
        while True:
            if time.monotonic() - last_check >= HEALTH_INTERVAL:
                last_check = time.monotonic()
                asyncio.get_running_loop().create_task(self.check_nodes())
            await asyncio.sleep(AUTOSTOP_TICK)
            with contextlib.suppress(Exception):
                await self.autostop_due()

    async def check_nodes(self) -> None:
        """Ask every node of every ssh cluster whether it answers (at start: reconcile what
        changed while the daemon was down; then every few minutes)."""
        nodes = [n for e in self.state.clusters.values()
                 if e.record.infra != "local" and e.record.status in ("UP", "UNHEALTHY")
                 for n in e.record.nodes]
        await asyncio.gather(*(SSH.check(n) for n in nodes), return_exceptions=True)

    async def autostop_due(self) -> None:
        """Stop (or tear down) clusters idle past their autostop, as their owner would."""
        load = self.scheduler.cluster_busy
        for entry in self.state.idle_clusters(time.time(), load):
            rec = entry.record
            owner = caller_for(rec.uid, self.is_admin(rec.uid))
            op = protocol.Down(cluster=rec.name) if rec.autostop_down else \
                protocol.Stop(cluster=rec.name)
            entry.autostopping = True
            req, _ = await self.scheduler.submit_long(op, owner)
            log.info("autostop: %s idle for %g min: %s requested (%s)", rec.name, rec.autostop,
                     req.record.name, req.record.id)

    # ---- retention -----------------------------------------------------------------------

    async def _gc_loop(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.collect_garbage()
            await asyncio.sleep(GC_INTERVAL)

    async def collect_garbage(self, now: float | None = None) -> int:
        """Remove finished requests (and their logs) older than the retention period."""
        hours = self.config.retention_hours
        if hours < 0:
            return 0
        cutoff = (now or time.time()) - hours * 3600
        removed = 0
        while ids := await self.store.finished_before(cutoff):
            # Rows first: a request that can still be listed always has its log.
            await self.store.delete_requests(ids)
            await asyncio.to_thread(_unlink_logs, self.config.logs_dir, ids)
            removed += len(ids)
        if removed:
            log.info("retention: removed %d finished requests older than %gh", removed, hours)
        return removed


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _unlink_logs(logs_dir: Path, ids: list[str]) -> None:
    for rid in ids:
        with contextlib.suppress(FileNotFoundError):
            (logs_dir / f"{rid}.log").unlink()
