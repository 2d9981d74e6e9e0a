"""One daemon per state directory: the lock a daemon takes first and holds for its life."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "skyd.lock"


class AlreadyRunning(RuntimeError):
    """Another daemon holds the state directory (or it cannot be locked): nothing was
    touched."""


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
