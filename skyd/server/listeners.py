"""Listening sockets (who is on the other end: skyd.identity)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from skyd.identity import group_id


class ListenError(RuntimeError):
    pass


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
