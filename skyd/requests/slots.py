"""The one FIFO slot primitive that serves every bounded queue (the short queue, the jobs
controller's launches): waiters are admitted strictly in arrival order."""

from __future__ import annotations

import asyncio
import collections
import contextlib


class FifoSlots:
    """A counting semaphore that admits waiters strictly in arrival order."""

    def __init__(self, size: int):
        self.size = size
        self.in_use = 0
        self.peak = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.in_use < self.size and not self._waiters:
            self._take()
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()          # granted just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def try_acquire(self) -> bool:
        """A slot now if one is free and nobody waits for one; never waits."""
        if self.in_use < self.size and not self._waiters:
            self._take()
            return True
        return False

    def take(self) -> None:
        """A slot whatever the bound (what recovery finds already holding one)."""
        self._take()

    def _take(self) -> None:
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)

    def release(self) -> None:
        self.in_use -= 1
        while self._waiters and self.in_use < self.size:
            fut = self._waiters.popleft()
            if not fut.done():
                self._take()
                fut.set_result(None)
