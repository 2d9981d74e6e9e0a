"""The privilege boundary (DESIGN §3): every place where the root daemon meets a path or
a process that belongs to a user goes through this module, so a reviewer checks one file.

The rule: the daemon never opens, creates, reads, renames or deletes a path a user can
change while holding more privilege than that user. So:

- What a job writes that the daemon must read (its output, its exit status) lives in a
  *control directory* the daemon creates under its own state dir (root-owned, 0700, in
  root-owned parents). The daemon creates the files and hands them to the job's runner as
  open descriptors; the user never has a path to them, so nothing can be swapped for a
  symlink, a FIFO or a device.
- Every open the daemon makes is O_NOFOLLOW|O_NONBLOCK and must fstat as a regular file,
  so even a mistake elsewhere cannot block the event loop on a FIFO or follow a link.
- Work inside a user's space (their cluster directory, its removal) runs *as that user*,
  in a child that dropped every privilege first.
- Jobs and setups get a clean login-like environment of their owner, never the daemon's.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import shutil
import stat
from pathlib import Path
from typing import Callable

# Work yields the CPU to the daemon's loop: a worker once it has a request (and all it
# starts: setup commands) and every local job run this much nicer than the daemon, so a
# burst of work never slows accepting, answering and recording requests.
WORK_NICE = 10
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SAFE = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class UnsafeFile(OSError):
    """A path that is not the regular file the daemon expects (a link, FIFO, device...)."""


# ---- identities --------------------------------------------------------------------------

def identity(uid: int) -> tuple[str, int, str, str]:
    """(name, primary gid, home, shell) for a uid; placeholders for ids without an entry."""
    try:
        pw = pwd.getpwuid(uid)
        return pw.pw_name, pw.pw_gid, pw.pw_dir, pw.pw_shell or "/bin/sh"
    except KeyError:
        return f"uid{uid}", uid, "/", "/bin/sh"


def groups_of(uid: int, gid: int) -> list[int]:
    name = identity(uid)[0]
    try:
        return os.getgrouplist(name, gid)
    except OSError:
        return [gid]


def login_env(uid: int) -> dict[str, str]:
    """What a login of `uid` starts with: nothing of the daemon's own environment."""
    name, _gid, home, shell = identity(uid)
    return {"HOME": home, "USER": name, "LOGNAME": name, "SHELL": shell,
            "PATH": STANDARD_PATH, "LANG": "C.UTF-8"}


def popen_identity(uid: int, gid: int) -> dict:
    """subprocess.Popen arguments that start a child as `uid` (nothing when we are it)."""
    if os.geteuid() != 0 or uid == os.geteuid():
        return {}
    return {"user": uid, "group": gid, "extra_groups": groups_of(uid, gid)}


def exec_identity(uid: int, gid: int) -> tuple[list[str], dict]:
    """How to start a child as `uid` without forking the daemon: a command prefix (util-
    linux's setpriv: groups, gid, then uid, and it execs the command in place) and the
    Popen arguments. Python forks a whole copy of the daemon, holding the GIL, for a Popen
    that sets ids itself (milliseconds for a daemon of tens of MiB: the loop stands still),
    where it can vfork for one that does not. Where setpriv is missing: popen_identity."""
    if os.geteuid() != 0 or uid == os.geteuid():
        return [], {}
    setpriv = _setpriv()
    groups = groups_of(uid, gid)
    # setpriv reads each id as a name first: a user or group named by digits would stand
    # for another id, so then the ids are set as numbers, by Popen.
    if setpriv is None or _named_like_numbers(uid, [gid, *groups]):
        return [], popen_identity(uid, gid)
    listed = ",".join(map(str, groups))
    return [setpriv, f"--regid={gid}", f"--reuid={uid}",
            f"--groups={listed}" if listed else "--clear-groups", "--"], {}


def _named_like_numbers(uid: int, gids: list[int]) -> bool:
    """Does a user named like `uid`, or a group named like one of `gids`, exist?"""
    try:
        pwd.getpwnam(str(uid))
        return True
    except KeyError:
        pass
    for g in gids:
        try:
            grp.getgrnam(str(g))
            return True
        except KeyError:
            pass
    return False


@functools.cache
def _setpriv() -> str | None:
    for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):      # never a PATH a user set
        if os.access(f"{d}/setpriv", os.X_OK):
            return f"{d}/setpriv"
    return None


def scope_identity(uid: int, gid: int) -> tuple[list[str], dict]:
    """For a child that stays root until `systemd-run --scope` (root: it makes a system
    scope) has registered it, then becomes `uid` before it execs the command: the Popen
    arguments (the owner's supplementary groups, set before the exec: systemd-run sets
    only the gid and uid) and systemd-run's options (gid, then uid; it execs nothing when
    either fails). Nothing when we are `uid` already (or not root)."""
    if os.geteuid() != 0 or uid == os.geteuid():
        return [], {}
    try:
        user = pwd.getpwuid(uid).pw_name    # by name: systemd-run sets USER= from it
    except KeyError:
        user = str(uid)
    return [f"--uid={user}", f"--gid={gid}"], {"extra_groups": groups_of(uid, gid)}


def drop_to(uid: int, gid: int) -> None:
    """Become `uid` for good (in a child process): groups, gid, then uid."""
    if os.geteuid() != 0 or uid == 0:
        return
    os.setgroups(groups_of(uid, gid))
    os.setgid(gid)
    os.setuid(uid)


def run_as(uid: int, gid: int, fn: Callable[[], None]) -> str | None:
    """Run `fn` in a forked child that became `uid`; None on success, else why it failed.
    For work in a user's space from a process that still holds root."""
    if os.geteuid() != 0 or uid == 0:
        try:
            fn()
            return None
        except OSError as e:
            return str(e)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                      # the child: never returns
        code = 0
        try:
            os.close(r)
            drop_to(uid, gid)
            fn()
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            with contextlib.suppress(OSError):
                os.write(w, f"{type(e).__name__}: {e}".encode()[:4000])
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        why = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return why or f"exit status {os.waitstatus_to_exitcode(status)}"


# ---- opening files the daemon reads -----------------------------------------------------

def open_regular(path: str | Path, flags: int = os.O_RDONLY, mode: int = 0o600,
                 owners: tuple[int, ...] | None = None) -> int:
    """Open `path` without following a final symlink and without blocking on a FIFO;
    refuse anything but a regular file (owned by one of `owners`, when given)."""
    fd = os.open(path, flags | _SAFE, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path} is not a regular file")
        if owners is not None and st.st_uid not in owners:
            raise UnsafeFile(f"{path} is not owned by the expected user")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | Path, offset: int, size: int,
                 owners: tuple[int, ...] | None = None) -> bytes:
    """Up to `size` bytes from `offset`; b"" for a missing file. Blocking: from the event
    loop call it through asyncio.to_thread."""
    try:
        fd = open_regular(path, owners=owners)
    except FileNotFoundError:
        return b""
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def read_small(path: str | Path, limit: int = 64) -> bytes | None:
    """A tiny status file the daemon itself created (an exit status); None when absent or
    not a regular file. Cheap enough for the loop: a non-blocking open of our own file."""
    try:
        fd = open_regular(path)
    except OSError:
        return None
    try:
        return os.pread(fd, limit, 0)
    finally:
        os.close(fd)


# ---- the daemon's own directories --------------------------------------------------------

def private_dir(path: Path, mode: int = 0o700) -> Path:
    """A directory only root may enter (its parents must be the daemon's too)."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise UnsafeFile(f"{path} is not a directory owned by the daemon")
    os.chmod(path, mode)
    return path


def remove_private_tree(path: Path) -> None:
    """Remove a tree the daemon created and no user can reach (its control directories).
    shutil.rmtree works with directory descriptors and never follows links."""
    shutil.rmtree(path, ignore_errors=True)


class JobFiles:
    """The control directory of one node of one job: `run.log` (the job's output, owned by
    the job's owner so quotas apply) and `exit_code`, created by the daemon and passed to
    the runner as descriptors; `cancelled`, the daemon's marker."""

    def __init__(self, directory: Path):
        self.dir = directory

    @property
    def log(self) -> Path:
        return self.dir / "run.log"

    @property
    def exit_code(self) -> Path:
        return self.dir / "exit_code"

    @property
    def cancelled(self) -> Path:
        return self.dir / "cancelled"

    def open_for_runner(self, uid: int, gid: int) -> tuple[int, int]:
        """(log fd, exit-status fd) for a runner about to start; creates them if needed.
        Opened for appending: a runner started again after a restart adds to the same."""
        private_dir(self.dir)
        log = open_regular(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            code = open_regular(self.exit_code, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        except BaseException:
            os.close(log)
            raise
        if os.geteuid() == 0:
            os.fchown(log, uid, gid)
        return log, code

    def mark_cancelled(self) -> None:
        with contextlib.suppress(OSError):
            os.close(open_regular(self.cancelled, os.O_WRONLY | os.O_CREAT))

    def is_cancelled(self) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.cancelled).st_mode)
        except OSError:
            return False

    def exit_status(self) -> int | None:
        raw = read_small(self.exit_code)
        if not raw or not raw.endswith(b"\n"):
            return None
        try:
            return int(raw.split(b"\n", 1)[0])
        except ValueError:
            return None


# ---- a user's own directories -------------------------------------------------------------

def make_user_dir(parent: Path, name: str, uid: int, gid: int, mode: int = 0o700) -> Path:
    """Create `parent/name` for `uid`, fresh. `parent` is the daemon's (so no user can
    plant anything in it). A leftover of the same name that is not a directory of this
    very owner is moved aside and removed as its own owner first: a new cluster never
    inherits anything of an earlier one."""
    path = parent / name
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
            return path           # this owner's own (an interrupted launch, run again)
        discard_user_tree(parent, name)
        os.mkdir(path, mode)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    return path


def discard_user_tree(parent: Path, name: str) -> str | None:
    """Take `parent/name` out of use at once (a rename inside the daemon's own directory),
    then remove it as whoever owns it. None when it is gone, else what is left and why."""
    path = parent / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    trash = private_dir(parent / ".trash", 0o711)
    aside = trash / f"{name}.{os.getpid()}.{os.urandom(4).hex()}"
    os.rename(path, aside)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(aside)
        return None
    return remove_user_tree(aside, st.st_uid, st.st_gid)


def remove_user_tree(path: Path, uid: int, gid: int) -> str | None:
    """Remove a user's tree as that user (its contents), then the emptied top directory
    itself from its parent, which is the daemon's. None on success, else why not."""
    why = run_as(uid, gid, lambda: rmtree_owned(path))
    if why is None:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)            # empty now; we own the parent
    return why


def rmtree_owned(path: Path) -> None:
    """Remove everything below `path` as its owner, and `path` when we may. Directories
    the owner made read-only are made writable first (the owner may always chmod them)."""
    if not path.exists():
        return
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    for _dirpath, dirnames, _files in os.walk(path):     # top-down: fix, then descend
        for d in dirnames:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(_dirpath, d), 0o700)  # as the owner: only theirs
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
    with contextlib.suppress(PermissionError):
        path.rmdir()
