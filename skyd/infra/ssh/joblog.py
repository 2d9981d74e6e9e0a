"""A job's log on its ssh nodes as a log source (skyd.streams.follow)."""

from __future__ import annotations

import asyncio
import shlex
import subprocess
from typing import Hashable

from skyd.infra.base import JobHandle, NodeProc, rank_prefix
from skyd.infra.ssh.connection import SshClient
from skyd.infra.ssh.scripts import ALIVE
from skyd.protocol import NodeInfo
from skyd.streams import LineMerge, LogSource, Topic


class SshJobLog(LogSource):
    """A job's log on its nodes, through one `tail` per node over ssh (as the cluster's
    owner): its output comes down the pipe, so the daemon hears it — no polling. The
    tails end when the job's runners have (`follow`), or at the end of the file."""

    def __init__(self, client: SshClient, handle: JobHandle, nodes: list[NodeInfo],
                 offset: int, follow: bool):
        by_rank = {n.rank: n for n in nodes}
        self.client, self.follow = client, follow
        self.parts = [(np, by_rank[np.rank]) for np in handle.nodes if np.rank in by_rank]
        self.start = offset + 1 if len(self.parts) == 1 else 1
        self.merge = LineMerge([rank_prefix(np.rank, len(self.parts)) for np, _ in self.parts])
        self.topic = Topic()            # moves on every chunk, and when a tail ends
        self.buf = bytearray()
        self.ended = 0
        self.tasks: list[asyncio.Task] | None = None

    def mark(self) -> int:
        return self.topic.version

    def finished(self) -> bool:
        return self.ended >= len(self.parts)

    async def wait_change(self, seen: Hashable) -> None:
        assert isinstance(seen, int)
        await self.topic.wait(seen)

    async def read(self, offset: int) -> bytes:
        if self.tasks is None:
            self.tasks = [asyncio.ensure_future(self._tail(i, np, node))
                          for i, (np, node) in enumerate(self.parts)]
        if not self.follow:     # what is there: until the tails reach the end of the files
            while not self.buf and not self.finished():
                await self.topic.wait(self.topic.version)
        done = self.finished()
        data, self.buf = bytes(self.buf), bytearray()
        return data or (self.merge.rest() if done else b"")

    async def _tail(self, i: int, np: NodeProc, node: NodeInfo) -> None:
        try:
            got = await self._pipe(i, node, self._command(np, self.start))
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

    async def _pipe(self, i: int, node: NodeInfo, cmd: str) -> int:
        """Run `cmd` on the node, merging its output into the log; the bytes it gave."""
        proc = None
        got = 0
        try:
            proc = await self.client.exec(node, cmd, stdout=subprocess.PIPE,
                                         stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            while data := await proc.stdout.read(65536):
                got += len(data)
                self.buf += self.merge.feed(i, data)
                self.topic.notify()
            return got
        finally:
            if proc is not None:
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()

    def close(self) -> None:
        for t in self.tasks or ():
            t.cancel()
