"""A job's log on its ssh nodes as a log source (skyd.streams.follow)."""

from __future__ import annotations

import asyncio
import collections
import shlex
import subprocess
from typing import Callable, Hashable

from skyd.infra.base import JobHandle, NodeProc, already_ended, rank_prefix
from skyd.infra.ssh.connection import SshClient, last_lines, where
from skyd.infra.ssh.scripts import ALIVE
from skyd.protocol import NodeInfo
from skyd.streams import LineMerge, LogSource, Topic

SSH_FAILED = 255
RETRY = (1.0, 10.0)     # back-off while a followed node does not answer


class SshJobLog(LogSource):
    """A job's log on its nodes, through one `tail` per node over ssh (as the cluster's
    owner): its output comes down the pipe, so the daemon hears it — no polling. The
    tails end when the job's runners have (`follow`), or at the end of the file.

    A node that stops answering (ssh gives up: it hangs, or the network is gone) is said
    in a notice; followed, its tail is started again from where it was until it answers
    or the job has `ended()` — a follower waits, told why, and misses nothing."""

    def __init__(self, client: SshClient, handle: JobHandle, nodes: list[NodeInfo],
                 offset: int, follow: bool, ended: Callable[[], bool] = already_ended):
        by_rank = {n.rank: n for n in nodes}
        self.client, self.follow, self.ended_job = client, follow, ended
        self.parts = [(np, by_rank[np.rank]) for np in handle.nodes if np.rank in by_rank]
        self.start = offset + 1 if len(self.parts) == 1 else 1
        self.merge = LineMerge([rank_prefix(np.rank, len(self.parts)) for np, _ in self.parts])
        self.topic = Topic()            # moves on every chunk, and when a tail ends
        # What a read gives next, in order: output (bytearrays) and notices (str).
        self.out: collections.deque[bytearray | str] = collections.deque()
        self.silent = [False] * len(self.parts)     # a part's node stopped answering
        self.ended = 0
        self.tasks: list[asyncio.Task] | None = None

    def mark(self) -> int:
        return self.topic.version

    def finished(self) -> bool:
        return self.ended >= len(self.parts)

    async def wait_change(self, seen: Hashable) -> None:
        assert isinstance(seen, int)
        await self.topic.wait(seen)

    async def read(self, offset: int) -> bytes | str:
        if self.tasks is None:
            self.tasks = [asyncio.ensure_future(self._tail(i, np, node))
                          for i, (np, node) in enumerate(self.parts)]
        if not self.follow:     # what is there: until the tails reach the end of the files
            while not self.out and not self.finished():
                await self.topic.wait(self.topic.version)
        done = self.finished()
        if self.out:
            item = self.out.popleft()
            return item if isinstance(item, str) else bytes(item)
        return self.merge.rest() if done else b""

    def _emit(self, item: bytes | str) -> None:
        if isinstance(item, str):
            self.out.append(item)
        elif item:
            if self.out and isinstance(self.out[-1], bytearray):
                self.out[-1] += item
            else:
                self.out.append(bytearray(item))
        self.topic.notify()

    async def _tail(self, i: int, np: NodeProc, node: NodeInfo) -> None:
        try:
            got, delay = 0, RETRY[0]
            while True:
                rc, n, err = await self._pipe(i, node, self._command(np, self.start + got))
                got += n
                if rc != SSH_FAILED:
                    break
                why = last_lines(err, 1) or "the connection was lost"
                if not self.follow or self.ended_job():
                    self._emit(f"node {node.rank} ({where(node)}) does not answer ({why}): "
                               "its output is missing here")
                    return
                if not self.silent[i]:
                    self.silent[i] = True
                    self._emit(f"node {node.rank} ({where(node)}) does not answer ({why}); "
                               "waiting for it: the output goes on from where it stopped")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY[1])
            if self.follow:
                # The follow tail is killed once the runner has gone, and on a loaded host
                # it may not have read the file's end by then: the rest, from where it was.
                await self._pipe(i, node, self._command(np, self.start + got, follow=False))
        finally:
            self.ended += 1
            self.topic.notify()

    def _command(self, np: NodeProc, start: int, follow: bool | None = None) -> str:
        log = shlex.quote(np.log)
        if self.follow if follow is None else follow:
            # Not `tail --pid`: it counts a zombie runner (not yet reaped by init, which
            # can take a second or more) as alive. ALIVE does not.
            return (f"pid={np.pid}; start={np.start}\n{ALIVE}"
                    f"tail -s 0.2 -c +{start} -f {log} 2>/dev/null & t=$!\n"
                    "while alive; do sleep 0.1; done; kill $t; true")
        return f"tail -c +{start} {log} 2>/dev/null; true"

    async def _pipe(self, i: int, node: NodeInfo, cmd: str) -> tuple[int, int, bytes]:
        """Run `cmd` on the node, merging its output into the log: its exit status (255:
        ssh failed), the bytes it gave and what ssh said on stderr."""
        proc = err = None
        got = 0
        try:
            proc = await self.client.exec(node, cmd, stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert proc.stdout is not None and proc.stderr is not None
            err = asyncio.ensure_future(proc.stderr.read())
            while data := await proc.stdout.read(65536):
                if self.silent[i]:
                    self.silent[i] = False
                    self._emit(f"node {node.rank} ({where(node)}) answers again")
                got += len(data)
                self._emit(self.merge.feed(i, data))
            return await proc.wait(), got, await err
        finally:
            if proc is not None:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
            if err is not None:
                err.cancel()

    def close(self) -> None:
        for t in self.tasks or ():
            t.cancel()
