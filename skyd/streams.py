"""Logs and the one way they are followed.

A follower reads a `LogSource` through `follow()`: what is there from its offset, then —
while the source is followed and not finished — waits for the source to change and reads
again. Each source has one wake: the `Topic` of whoever writes or learns of its output
(the daemon's own request and managed-job logs; a job's end, from its pidfd watcher),
the pipe of an ssh `tail`, and — only for output written by detached processes the daemon
cannot hear (a local job's files) — a bounded back-off poll (`Backoff`) beside its topic.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import AsyncGenerator, Awaitable, Callable, Hashable, Sequence

from skyd import metrics

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
        self.lost = 0                 # bytes a full disk refused since the last write

    def append(self, data: bytes) -> None:
        if self._fd < 0 or not data:
            return
        if self._room >= 0 and len(data) > self._room:
            if not self.truncated:    # once: keep what fits, say why the rest is dropped
                metrics.limit_hit("request_log_bytes")
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
        try:
            if self.lost:
                os.write(self._fd, f"[skyd] ({self.lost} bytes of output lost here: "
                                   "the disk was full)\n".encode())
                self.lost = 0
            os.write(self._fd, data)
        except OSError as e:
            # A full disk costs the log lines it refuses, never the request's outcome.
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self.lost += len(data)
            return
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


# ---- the source interface and the one follower -----------------------------------------

class LogSource:
    """Where a follower's output comes from.

    `read(offset)` gives what is there now from `offset` (bytes of log, b"" when nothing
    is new; a str is a notice about the stream and moves no offset). `finished()` says
    that nothing more will come (a source that is not followed is finished from the
    start); it is asked *before* a read, so an empty read after it means the end.
    `mark()` is taken before a read too: `wait_change(mark)` returns at once if the
    source moved since, else when it may have."""

    def mark(self) -> Hashable:
        return None

    async def read(self, offset: int) -> bytes | str:
        raise NotImplementedError

    def finished(self) -> bool:
        raise NotImplementedError

    async def wait_change(self, seen: Hashable) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """The follower is gone (or done): stop what the source started."""


async def follow(source: LogSource, offset: int = 0) -> AsyncGenerator[bytes | str, None]:
    """Yield the source's output from `offset` until it is finished."""
    try:
        while True:
            seen = source.mark()
            done = source.finished()
            data = await source.read(offset)
            if data:
                if isinstance(data, bytes):
                    offset += len(data)
                yield data
                continue
            if done:
                return
            await source.wait_change(seen)
    finally:
        source.close()


async def wait_any(*waits: Awaitable[object]) -> None:
    """Return when the first of these waits does; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


# ---- building blocks of sources ---------------------------------------------------------

class FileLog(LogSource):
    """A file the daemon writes itself (a request's log, a managed job's own logs): read
    in the loop, woken by its writer's topic. Without a topic: read what is there."""

    def __init__(self, path: str | Path, topic: Topic | None,
                 ended: Callable[[], bool] = lambda: True):
        self.path, self.topic, self.ended = path, topic, ended

    def mark(self) -> Hashable:
        return self.topic.version if self.topic is not None else 0

    async def read(self, offset: int) -> bytes:
        return read_from(self.path, offset)

    def finished(self) -> bool:
        return self.topic is None or self.ended()

    async def wait_change(self, seen: Hashable) -> None:
        if self.topic is not None:
            assert isinstance(seen, int)
            await self.topic.wait(seen)


class Backoff:
    """The wake of output written by processes the daemon cannot hear: the topic of what
    it does learn (a job's end), or else a poll that backs off while nothing comes."""

    def __init__(self, topic: Topic | None, bounds: tuple[float, float] = JOB_LOG_POLL):
        self.topic, self.bounds = topic, bounds
        self.delay = bounds[0]

    def mark(self) -> int:
        return self.topic.version if self.topic is not None else 0

    def got_output(self) -> None:
        self.delay = self.bounds[0]

    async def wait(self, seen: Hashable) -> None:
        delay, self.delay = self.delay, min(self.delay * 2, self.bounds[1])
        if self.topic is not None:
            assert isinstance(seen, int)
            await self.topic.wait(seen, delay)
        else:
            await asyncio.sleep(delay)


class LineMerge:
    """Several nodes' output as one stream: each complete line prefixed with its node
    (one node: its bytes as they are)."""

    def __init__(self, prefixes: Sequence[bytes]):
        self.prefixes = list(prefixes)
        self.partial = [b"" for _ in self.prefixes]

    def feed(self, i: int, data: bytes) -> bytes:
        prefix = self.prefixes[i]
        if not prefix:
            return data
        lines = (self.partial[i] + data).split(b"\n")
        self.partial[i] = lines.pop()
        return b"".join(prefix + ln + b"\n" for ln in lines)

    def rest(self) -> bytes:
        """The unfinished last lines, once no more output will come."""
        out = b"".join(p + self.partial[i] + b"\n"
                       for i, p in enumerate(self.prefixes) if self.partial[i])
        self.partial = [b"" for _ in self.prefixes]
        return out


class JobLogFiles(LogSource):
    """A job's log files, one per node, read with `read(path, offset)` (off the loop:
    they are not the daemon's), merged by line. `offset` counts what was delivered of a
    single node's file; several nodes are read from their start. Followed (`live`) until
    `ended()`, woken by `wake` (the job's topic, with a back-off poll)."""

    def __init__(self, sources: Sequence[tuple[bytes, str]], live: bool,
                 ended: Callable[[], bool], wake: Backoff,
                 read: Callable[[str, int], Awaitable[bytes]]):
        self.paths = [path for _, path in sources]
        self.merge = LineMerge([prefix for prefix, _ in sources])
        self.offsets = [0 for _ in sources]
        self.live, self.ended, self.wake, self._read = live, ended, wake, read

    def mark(self) -> Hashable:
        return self.wake.mark()

    async def read(self, offset: int) -> bytes:
        done = self.finished()      # before reading: then nothing comes after the reads
        if len(self.paths) == 1:
            self.offsets[0] = offset
        while True:
            got, out = False, []
            for i, path in enumerate(self.paths):
                data = await self._read(path, self.offsets[i])
                if data:
                    got = True
                    self.offsets[i] += len(data)
                    out.append(self.merge.feed(i, data))
            if not got:
                return self.merge.rest() if done else b""
            self.wake.got_output()
            if any(out):            # else only parts of lines: read on
                return b"".join(out)

    def finished(self) -> bool:
        return not self.live or self.ended()

    async def wait_change(self, seen: Hashable) -> None:
        await self.wake.wait(seen)
