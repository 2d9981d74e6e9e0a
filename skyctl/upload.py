"""A task's local files, shipped to the VM for an ssh:// daemon: the workdir and the local
sources of file_mounts are on the laptop, and the daemon reads paths on its own machine.

Each tree is a tar made the same way every time (sorted, owners dropped), named by its
SHA-256, and stored on the VM under ~/.skyd/uploads/HASH of the SSH login (a 0700
directory): a tree already there is not sent again. Extraction goes to a temporary
directory renamed into place, so a HASH directory that exists is complete. The task is
then submitted with the VM's paths. Over the limit (upload_limit_mb, default 1024 MiB) the
launch is refused before anything is sent; a large upload shows its progress on stderr.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import IO, cast

import msgspec

from skyctl.endpoint import EndpointError, SshAddress, config_path, setting
from skyctl.errors import Unreachable
from skyctl.sshcmd import run, spawn, ssh_argv

UPLOADS = ".skyd/uploads"            # under the SSH login's home on the VM
DEFAULT_LIMIT_MB = 1024
PROGRESS_FROM = 8 << 20              # bytes: smaller uploads go by without a word
_CHUNK = 1 << 20


class Tree:
    """One local path (a directory, or a file) as a content-addressed tar."""

    def __init__(self, path: str):
        self.path = path
        self.is_dir = os.path.isdir(path)
        self.tar: IO[bytes] = tempfile.TemporaryFile(prefix="skyctl-upload-")
        self.size = 0
        self.digest = ""

    def pack(self, budget: int) -> None:
        """Write the tar (stopping once it is over `budget` bytes) and hash it."""
        h = hashlib.sha256()
        out = _Hashing(self.tar, h, budget, self.path)
        with tarfile.open(fileobj=cast(IO[bytes], out), mode="w|", format=tarfile.GNU_FORMAT) as tar:
            if self.is_dir:
                for full, name in _walk(self.path):
                    _add(tar, full, name)
            else:
                _add(tar, self.path, os.path.basename(self.path))
        self.size, self.digest = out.size, h.hexdigest()
        self.tar.seek(0)

    def remote_path(self, home: str) -> str:
        where = f"{home}/{UPLOADS}/{self.digest}"
        return where if self.is_dir else f"{where}/{os.path.basename(self.path)}"


class TooLarge(EndpointError):
    pass


class _Hashing:
    """A write-only file that hashes what passes and counts it against a budget."""

    def __init__(self, f: IO[bytes], h, budget: int, path: str):
        self.f, self.h, self.budget, self.path, self.size = f, h, budget, path, 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self.budget:
            raise TooLarge(f"{self.path}: the task's files are over the upload limit of "
                           f"{_mib(limit_bytes())}; set upload_limit_mb in {config_path()} "
                           "(or SKYD_UPLOAD_LIMIT_MB), or leave big data out of the workdir")
        self.h.update(data)
        return self.f.write(data)


def _walk(root: str):
    """(full path, name in the tar) of everything under root, in one fixed order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            yield os.path.join(dirpath, name), name if rel == "." else os.path.join(rel, name)


def _add(tar: tarfile.TarFile, full: str, name: str) -> None:
    info = tar.gettarinfo(full, arcname=name)
    if not (info.isfile() or info.isdir() or info.issym()):
        return                                  # sockets, fifos, devices: not task files
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = int(info.mtime)
    if info.isfile():
        with open(full, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def limit_bytes() -> int:
    mb = setting("upload_limit_mb", "SKYD_UPLOAD_LIMIT_MB", int)
    return (DEFAULT_LIMIT_MB if mb is None else mb) << 20


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def ship(addr: SshAddress, op):
    """Upload the task's local trees that the VM does not have; the op with their paths
    on the VM."""
    task = op.task
    sources = list(dict.fromkeys(([task.workdir] if task.workdir else [])
                                 + list(task.file_mounts.values())))
    trees, budget = {}, limit_bytes()
    try:
        for src in sources:
            tree = trees[src] = Tree(src)
            tree.pack(budget)
            budget -= tree.size
        home, missing = _missing(addr, [t.digest for t in trees.values()])
        for tree in trees.values():
            if tree.digest in missing:
                _send(addr, tree)
                missing.discard(tree.digest)
    finally:
        for tree in trees.values():
            tree.tar.close()
    moved = msgspec.structs.replace(
        task, workdir=trees[task.workdir].remote_path(home) if task.workdir else None,
        file_mounts={dst: trees[src].remote_path(home) for dst, src in task.file_mounts.items()})
    return msgspec.structs.replace(op, task=moved)


def _missing(addr: SshAddress, digests: list[str]) -> tuple[str, set[str]]:
    """The login's home on the VM, and which of the trees it does not have yet."""
    script = (f'u="$HOME/{UPLOADS}"; printf "%s\\n" "$HOME"; for h in {" ".join(digests)}; '
              'do [ -d "$u/$h" ] || printf "%s\\n" "$h"; done')
    p = run(addr, script)
    lines = p.stdout.decode(errors="replace").splitlines()
    if p.returncode != 0 or not lines or not lines[0].startswith("/"):
        raise Unreachable(f"cannot look for earlier uploads on {addr.host}: "
                          f"{p.stderr.decode(errors='replace').strip() or p.returncode}")
    return lines[0], set(lines[1:])


def _send(addr: SshAddress, tree: Tree) -> None:
    d = tree.digest
    script = (f'set -e; umask 077; u="$HOME/{UPLOADS}"; mkdir -p "$u"; umask 022; '
              f't=$(mktemp -d "$u/.in.XXXXXX"); '
              f'if tar -x -f - -C "$t"; then chmod 755 "$t"; '
              f'mv -T "$t" "$u/{d}" 2>/dev/null || {{ rm -rf "$t"; test -d "$u/{d}"; }}; '
              f'else rm -rf "$t"; exit 1; fi')
    progress = _Progress(tree) if tree.size >= PROGRESS_FROM else None
    proc = spawn(ssh_argv(addr, f"sh -c {shlex.quote(script)}"), stdin=subprocess.PIPE,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        while chunk := tree.tar.read(_CHUNK):
            proc.stdin.write(chunk)
            if progress:
                progress.sent(len(chunk))
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0:
        raise Unreachable(f"uploading {tree.path} to {addr.host} failed: {err or proc.returncode}")
    if progress:
        progress.done()


class _Progress:
    """One line on stderr: rewritten in place on a terminal, else said at start and end."""

    def __init__(self, tree: Tree):
        self.tree, self.total, self.done_bytes = tree, tree.size, 0
        self.start = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()
        what = "workdir" if tree.is_dir else "file"
        self.label = f"Uploading {what} {tree.path} ({_mib(self.total)})"
        if not self.tty:
            sys.stderr.write(self.label + "...\n")
            sys.stderr.flush()

    def sent(self, n: int) -> None:
        self.done_bytes += n
        now = time.monotonic()
        if self.tty and now - self.last >= 0.2:
            self.last = now
            pct = 100 * self.done_bytes // max(self.total, 1)
            sys.stderr.write(f"\r{self.label}: {pct}%")
            sys.stderr.flush()

    def done(self) -> None:
        secs = max(time.monotonic() - self.start, 1e-6)
        rate = f"{self.total / secs / (1 << 20):.1f} MiB/s"
        sys.stderr.write(("\r" if self.tty else "") + f"{self.label}: done in {secs:.1f} s "
                         f"({rate}).\n")
        sys.stderr.flush()

