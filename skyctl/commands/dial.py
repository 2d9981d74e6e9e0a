"""`dial-stdio`: bridge stdin and stdout to the daemon's Unix socket (what an ssh:// client
runs on the VM, over its SSH session). The bytes pass through untouched: the client does
the handshake itself, and the daemon sees this process's uid, the SSH login's.

When the socket cannot be reached, the exit status says why, for the client at the other
end: 4 no socket, 5 permission denied, 75 the socket refuses (the daemon is restarting).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading

from skyctl.commands.common import host
from skyctl.connection import open_unix
from skyctl.context import Ctx
from skyctl.errors import NoDaemon, Restarting, SocketDenied, Unreachable
from skyctl.exits import DENIED, OK, UNREACHABLE

RESTARTING = 75     # EX_TEMPFAIL; skyctl.remote.DIAL_RESTARTING
_CHUNK = 1 << 18


def add_dial(p: argparse.ArgumentParser) -> None:
    p.description = ("Bridge stdin and stdout to the daemon's Unix socket: what "
                     "SKYD_HOST=ssh://user@vm runs on the VM. Not for people.")
    host(p, default=argparse.SUPPRESS)
    p.set_defaults(func=run_dial)


ARGUMENTS = {"dial-stdio": add_dial}


def run_dial(ctx: Ctx, args: argparse.Namespace) -> int:
    if not isinstance(ctx.path, str):
        sys.stderr.write(f"dial-stdio bridges to a Unix socket, not {ctx.path} ({ctx.source})\n")
        return UNREACHABLE
    try:
        sock = open_unix(ctx.path, ctx.source, None)
    except Restarting as e:
        return _fail(e, RESTARTING)
    except NoDaemon as e:
        return _fail(e, UNREACHABLE)
    except SocketDenied as e:
        return _fail(e, DENIED)
    except Unreachable as e:
        return _fail(e, UNREACHABLE)
    bridge(sock, sys.stdin.fileno(), sys.stdout.fileno())
    return OK


def _fail(e: Exception, code: int) -> int:
    sys.stderr.write(f"{e}\n")
    return code


def bridge(sock: socket.socket, fd_in: int, fd_out: int) -> None:
    """Copy fd_in to the socket (a thread) and the socket to fd_out (here) until the
    daemon hangs up. The client's EOF is passed on as a half-close, so the daemon still
    answers what it was asked."""
    def upstream() -> None:
        try:
            while data := os.read(fd_in, _CHUNK):
                sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        while n := sock.recv_into(buf):
            done = 0
            while done < n:
                done += os.write(fd_out, view[done:n])
    except OSError:
        pass
    finally:
        sock.close()
