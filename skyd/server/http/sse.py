"""Server-sent events: one open response, events written as they come.

The browser's EventSource reconnects by itself after a drop and sends the last `id:` it
saw (Last-Event-ID), so a followed log resumes where it was.
"""

from __future__ import annotations

import time

from aiohttp import web

HEARTBEAT = 15.0      # seconds of silence before a comment line keeps proxies from timing out


class EventStream:
    def __init__(self, response: web.StreamResponse):
        self.response = response
        self.last_write = time.monotonic()

    @classmethod
    async def open(cls, request: web.Request) -> "EventStream":
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",          # a reverse proxy passes events on at once
        })
        await response.prepare(request)
        return cls(response)

    async def send(self, event: str, data: bytes, event_id: int | None = None) -> None:
        """One event; `data` is one line (JSON)."""
        head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
        await self._write(head.encode() + b"data: " + data + b"\n\n")

    async def keep_alive(self) -> None:
        if time.monotonic() - self.last_write >= HEARTBEAT:
            await self._write(b": keep-alive\n\n")

    async def _write(self, data: bytes) -> None:
        await self.response.write(data)
        self.last_write = time.monotonic()
