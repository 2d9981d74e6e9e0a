"""Request logs on disk, and followers woken by events rather than timers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

READ_CHUNK = 256 * 1024
JOB_LOG_POLL = (0.05, 0.5)   # job logs are written by detached processes: poll, backing off


class Topic:
    """A version counter that wakes whoever waits for it to move."""

    __slots__ = ("version", "_waiters")

    def __init__(self) -> None:
        self.version = 0
        self._waiters: list[asyncio.Future] = []

    def notify(self) -> None:
        self.version += 1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, seen: int, timeout: float | None = None) -> None:
        if self.version != seen:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            if timeout is None:
                await fut
            else:
                await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if not fut.done():
                fut.cancel()


class RequestLog:
    """The append-only log of one running request; the daemon is its only writer."""

    def __init__(self, path: Path, topic: Topic, limit: int = 0):
        self.path = path
        self.topic = topic            # the request's: its followers wake on every append
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        # Output kept at most `limit` bytes (0: no cap), counting what an earlier run of
        # the request left; the daemon's own lines are always written.
        self.limit = limit
        self._room = max(0, limit - os.fstat(self._fd).st_size) if limit > 0 else -1
        self.truncated = False

    def append(self, data: bytes) -> None:
        if self._fd < 0 or not data:
            return
        if self._room >= 0 and len(data) > self._room:
            if not self.truncated:    # once: keep what fits, say why the rest is dropped
                self.truncated = True
                kept, self._room = data[:self._room], 0
                sep = b"" if not kept or kept.endswith(b"\n") else b"\n"
                self._write(kept + sep + f"[skyd] output truncated: log limit of {self.limit} "
                                         f"bytes reached\n".encode())
            return
        if self._room > 0:
            self._room -= len(data)
        self._write(data)

    def _write(self, data: bytes) -> None:
        os.write(self._fd, data)
        self.topic.notify()

    def line(self, text: str) -> None:
        if self._fd >= 0:
            self._write(f"[skyd] {text}\n".encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.topic.notify()


def read_from(path: str | Path, offset: int, size: int = READ_CHUNK) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)
    except FileNotFoundError:
        return b""


async def follow(path: Path, offset: int, topic: Topic | None,
                 finished: Callable[[], bool]) -> AsyncIterator[bytes]:
    """Yield the file's bytes from `offset`; with a topic, wait for it to move until
    `finished()`; without one, read what is there and stop."""
    while True:
        seen = topic.version if topic is not None else 0
        data = read_from(path, offset)
        if data:
            offset += len(data)
            yield data
            continue
        if topic is None or finished():
            # One more read: the last append may have landed after the previous one.
            data = read_from(path, offset)
            if data:
                offset += len(data)
                yield data
                continue
            return
        await topic.wait(seen)


async def follow_files(sources: list[tuple[bytes, str]], offset: int, follow: bool,
                       finished: Callable[[], bool],
                       wait_change: Callable[[float], Awaitable[None]],
                       read: Callable[[str, int], Awaitable[bytes]]) -> AsyncIterator[bytes]:
    """Follow files written by processes we cannot hear from (job logs): read what is new,
    then sleep with back-off until `finished()`. Several files are merged by line, each
    line prefixed with its node. `offset` counts the bytes already delivered (one file).
    `read(path, offset)` fetches a chunk (off the loop: these files are not ours)."""
    offsets = [offset if len(sources) == 1 else 0 for _ in sources]
    partial = [b"" for _ in sources]
    delay = JOB_LOG_POLL[0]
    while True:
        done = finished()
        out = []
        for i, (prefix, path) in enumerate(sources):
            data = await read(path, offsets[i])
            if not data:
                continue
            offsets[i] += len(data)
            if not prefix:
                out.append(data)
                continue
            lines = (partial[i] + data).split(b"\n")
            partial[i] = lines.pop()
            out.extend(prefix + ln + b"\n" for ln in lines)
        if out:
            delay = JOB_LOG_POLL[0]
            yield b"".join(out)
            continue
        if done or not follow:
            rest = [p + partial[i] + b"\n" for i, (p, _) in enumerate(sources) if partial[i]]
            if rest:
                yield b"".join(rest)
            return
        await wait_change(delay)
        delay = min(delay * 2, JOB_LOG_POLL[1])
