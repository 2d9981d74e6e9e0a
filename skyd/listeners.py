"""Listening sockets and who is on the other end of them.

On a Unix socket the kernel says who is calling (SO_PEERCRED): no password to steal.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
import struct
from pathlib import Path

from skyd.scheduler import Caller
from skyd.worker import user_identity

_CRED = struct.Struct("3i")


class ListenError(RuntimeError):
    pass


def peer_caller(sock: socket.socket, admin_gid: int | None) -> Caller:
    _pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _CRED.size))
    name, _, home = user_identity(uid)
    return Caller(uid=uid, gid=gid, user=name, home=home, admin=is_admin(uid, admin_gid))


def is_admin(uid: int, admin_gid: int | None) -> bool:
    """Root, the daemon's own user, and members of the admin group."""
    if uid == 0 or uid == os.geteuid():
        return True
    if admin_gid is None:
        return False
    name, gid, _ = user_identity(uid)
    if gid == admin_gid:
        return True
    try:
        return name in grp.getgrgid(admin_gid).gr_mem
    except KeyError:
        return False


def group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ListenError(f"group {name!r} does not exist") from None


def bind_unix(path: Path, group: str | None) -> socket.socket:
    """Bind the daemon's socket: 0600, or 0660 for `group`. Refuse if a daemon answers there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(str(path).encode()) > 107:
        raise ListenError(f"socket path {path} is too long for a Unix socket (max 107 bytes)")
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise ListenError(f"another skyd is already listening on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)           # stale socket from a dead daemon
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            path.unlink(missing_ok=True)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)       # never world-reachable, not even between bind and chmod
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    gid = group_id(group)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    sock.listen(1024)
    sock.setblocking(False)
    return sock
