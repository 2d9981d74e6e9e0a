"""What the daemon's one squeue saw of each user's allocations, for that user's launches to
read: a launch waiting for its allocation learns Slurm's pending reason, or that Slurm
ended or will never start it, from here — no Slurm command of its own, however many
launches wait.

`<state>/slurm/<uid>.board`: written by the daemon only (a new file renamed into place
in its own directory, which no user can change), then given to its user, read-only.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import msgspec

from skyd import privilege
from skyd.infra.slurm.allocation import Allocation


class Board(msgspec.Struct):
    time: float                     # when the squeue behind it ran (wall clock)
    allocations: list[Allocation] = []
    error: str = ""                 # why Slurm could not be asked, if it could not

    def get(self, job_id: str) -> Allocation | None:
        return next((a for a in self.allocations if a.job_id == job_id), None)


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Board)


def board_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "slurm"


def board_path(state_dir: str | Path, uid: int) -> Path:
    return board_dir(state_dir) / f"{uid}.board"


def publish(state_dir: str | Path, boards: dict[int, Board]) -> None:
    """Write each user's board (blocking: from the loop, through a thread)."""
    d = privilege.private_dir(board_dir(state_dir), 0o711)
    for uid, board in boards.items():
        final, tmp = board_path(state_dir, uid), d / f".{uid}.board.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o400)
        try:
            os.write(fd, _enc.encode(board))
            if os.geteuid() == 0:
                os.fchown(fd, uid, privilege.identity(uid)[1])
        finally:
            os.close(fd)
        os.replace(tmp, final)


class Reader:
    """A user's board as a waiting launch reads it (worker side): decoded again only when
    the daemon has put a new one in place (a stat per look)."""

    def __init__(self, state_dir: str | Path, uid: int):
        self.path = board_path(state_dir, uid)
        self.stamp: tuple[int, int] | None = None
        self.board: Board | None = None

    def get(self, max_age: float) -> Board | None:
        """The board, if the daemon wrote it within `max_age` seconds."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if (st.st_ino, st.st_mtime_ns) != self.stamp:
            self.stamp = (st.st_ino, st.st_mtime_ns)
            try:
                self.board = _dec.decode(self.path.read_bytes())
            except (OSError, msgspec.DecodeError):
                self.board = None
        b = self.board
        return b if b is not None and time.time() - b.time <= max_age else None
