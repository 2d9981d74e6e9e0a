"""The child side of a long request: runs in a process forked from the preloaded forkserver.

A worker starts as an idle spare: its own process group, tied to its parent's life,
blocked reading its Assignment. Once assigned it sends its output to the log socket,
drops to the requester's identity, runs the blocking handler, reports Done and exits.
One process per request: cancelling the request is killing this process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import select
import signal
import socket
import sys
import threading
import traceback

import msgspec

from skyd import privilege, protocol
from skyd.infra import worker_provisioners
from skyd.protocol import Error, ErrorCode, SkydError
from skyd.requests.context import WorkerContext, long_handler, prepare_as_root
from skyd.requests.messages import Assignment, Done

_PR_SET_PDEATHSIG = 1
_assign_dec = msgspec.msgpack.Decoder(Assignment)
_op_dec = msgspec.msgpack.Decoder(protocol.AnyOp)


def _die_with_parent() -> None:
    """SIGKILL this process when the forkserver (and so the daemon) goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        return


def _die_with_daemon(ctrl: socket.socket) -> None:
    """Once busy: when the daemon goes away (its end of the control socket closes, which
    happens only when it dies or after it killed us), SIGKILL this whole process group,
    so the setup commands this worker started die with it. A watcher thread, blocked in
    poll(): nothing to do for the handler. (The parent-death signal alone would not do:
    the forkserver outlives the daemon while any worker holds its "alive" pipe, and it
    kills only the worker, never what the worker started.)"""
    def watch() -> None:
        p = select.poll()
        p.register(ctrl.fileno(), select.POLLRDHUP)
        while True:
            for _fd, ev in p.poll():
                if ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    os.killpg(0, signal.SIGKILL)
                    os._exit(1)
    threading.Thread(target=watch, name="die-with-daemon", daemon=True).start()


def _become_user(a: Assignment, parent: int) -> None:
    """Run as the person who asked, never with more privilege than they have."""
    if os.geteuid() != 0 or a.uid == 0:
        return
    os.initgroups(a.user, a.gid)
    os.setgid(a.gid)
    os.setuid(a.uid)
    _die_with_parent()              # a credential change clears the parent-death signal
    if os.getppid() != parent:
        os._exit(1)
    os.environ["HOME"], os.environ["USER"], os.environ["LOGNAME"] = a.home, a.user, a.user


def spare_main(ctrl: socket.socket, log: socket.socket, handlers: list[str]) -> None:
    for module in handlers:             # they register the long handlers
        importlib.import_module(module)
    os.setpgid(0, 0)
    _die_with_parent()
    parent = os.getppid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        frame = protocol.recv_frame(ctrl)
    except (ConnectionError, OSError):
        os._exit(0)                 # retired spare
    # Before any thread starts: on Linux the nice value is per thread, and inherited.
    with contextlib.suppress(OSError):
        os.nice(privilege.WORK_NICE)
    _die_with_daemon(ctrl)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    log.close()
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    done = _run(ctrl, frame, parent)
    try:
        protocol.send_msg(ctrl, done)
    except OSError:
        pass
    sys.stdout.flush()
    os._exit(0)


def _run(ctrl: socket.socket, frame: bytes, parent: int) -> Done:
    try:
        a = _assign_dec.decode(frame)
        op = _op_dec.decode(a.op)
        prepare_as_root(a, op)
        _become_user(a, parent)
        provisioners = worker_provisioners(a.state_dir, a.uid, a.ssh_known_hosts, a.slurm,
                                           getattr(op, "task", None))
        value = long_handler(type(op))(WorkerContext(ctrl, a, op, provisioners))
        return Done(value=value)
    except SkydError as e:
        return Done(error=e.to_wire())
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):     # a fault of the host, not a bug
            where = f" writing {e.filename}" if e.filename else ""
            return Done(error=Error(ErrorCode.UNAVAILABLE, f"no space left on the disk{where}",
                                    "free space (or raise the quota) and run it again"))
        traceback.print_exc()
        return Done(error=Error(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))
    except Exception as e:  # noqa: BLE001 - reported as the request's failure
        traceback.print_exc()
        return Done(error=Error(ErrorCode.INTERNAL, f"{type(e).__name__}: {e}"))
