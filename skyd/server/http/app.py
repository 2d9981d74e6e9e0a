"""The HTTP side: /metrics, /healthz, /readyz and the dashboard, one aiohttp application.

Entered on the daemon's exit stack right after the state directory is locked, so that
/readyz answers "starting" through recovery and "draining" through the drain; given back
last. Everything it shows it reads from the daemon's memory in the loop: /metrics through
the collectors, the dashboard through the board; only a page's first look at its finished
work, and a log, are read from the store and the request's log file.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

from skyd import metrics
from skyd.identity import Caller, caller_for
from skyd.protocol import ErrorCode, SkydError
from skyd.server.handlers.api import lookup, record_of
from skyd.server.http.access import host_allowed, is_loopback, socket_owner
from skyd.server.http.board import Board
from skyd.server.http.collector import CountsCollector, StateCollector
from skyd.server.http.sse import HEARTBEAT, EventStream
from skyd.server.listeners import ListenError
from skyd.streams import FileLog, follow

if TYPE_CHECKING:
    from skyd.server.daemon import Daemon

log = logging.getLogger("skyd.http")
STATIC = Path(__file__).with_name("static")
PROBES = frozenset({"/metrics", "/healthz", "/readyz"})     # no per-user data: anyone local
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_json = msgspec.json.Encoder()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpSide:
    def __init__(self, daemon: Daemon, host: str):
        self.d = daemon
        self.s = daemon.services
        self.host = host
        self.counts = metrics.enable()
        self.board = Board(self.s, self.ready)
        self.board.listen(self.counts)
        self.registry = CollectorRegistry()
        for standard in (ProcessCollector, PlatformCollector, GCCollector):
            standard(registry=self.registry)
        self.registry.register(StateCollector(daemon, self.ready, lambda: self.board.pages))
        self.registry.register(CountsCollector(self.counts))
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_get("/healthz", self.healthz)
        self.app.router.add_get("/readyz", self.readyz)
        self.app.router.add_get("/metrics", self.metrics)
        self.app.router.add_get("/", self.index)
        self.app.router.add_get("/api/events", self.events)
        self.app.router.add_get("/api/requests/{id}/log", self.request_log)
        self.app.router.add_static("/static/", STATIC, follow_symlinks=False)

    # ---- health ---------------------------------------------------------------------------

    def not_ready(self) -> str | None:
        """Why the daemon does not take requests now; None once recovered and listening."""
        d = self.d
        if d.stopping.is_set() or not d.scheduler.accepting:
            return "draining: finishing running requests before it stops"
        if d._server is None or not d._server.is_serving():
            return "starting: recovering requests, clusters and managed jobs"
        return None

    def ready(self) -> bool:
        return self.not_ready() is None

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")      # the loop answered: the daemon is alive

    async def readyz(self, request: web.Request) -> web.Response:
        why = self.not_ready()
        if why is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def metrics(self, request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})

    # ---- who asks ---------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is None or not is_loopback(peer[0]):
            raise web.HTTPForbidden(text="skyd answers HTTP from this host only\n")
        if request.path not in PROBES and not host_allowed(request.headers.get("Host"), self.host):
            raise web.HTTPMisdirectedRequest(
                text=f"this is skyd's dashboard on {self.host}: open it by that address or "
                     "as localhost, not under another name\n")
        response = await handler(request)
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    async def _viewer(self, request: web.Request) -> Caller:
        """The person whose process opened this connection (admins see everyone's work)."""
        transport = request.transport
        if transport is None:
            raise web.HTTPForbidden(text="the connection is gone\n")
        peer = transport.get_extra_info("peername")[:2]
        ours = transport.get_extra_info("sockname")[:2]

        def who() -> Caller | None:
            uid = socket_owner(peer, ours)
            return None if uid is None else caller_for(uid, self.d.is_admin(uid))

        caller = await asyncio.to_thread(who)
        if caller is None:
            raise web.HTTPForbidden(text="cannot tell which user opened this connection\n")
        why = self.not_ready()
        if why is not None:
            raise web.HTTPServiceUnavailable(text=f"skyd is {why}; retry in a moment\n")
        return caller

    # ---- the dashboard ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The viewer's state, sent again whenever it changed (server-sent events)."""
        caller = await self._viewer(request)
        board = self.board
        try:
            await board.join(caller)
            stream = await EventStream.open(request)
            await stream.send("hello", _json.encode({"user": caller.user, "uid": caller.uid,
                                                     "admin": caller.admin}))
            last = b""
            while not board.closing:
                seen = board.tick.version
                doc = board.document(caller)
                if doc != last:
                    await stream.send("state", doc)
                    last = doc
                else:
                    await stream.keep_alive()
                await board.tick.wait(seen, HEARTBEAT)
        finally:
            board.leave(caller)
        return stream.response

    async def request_log(self, request: web.Request) -> web.StreamResponse:
        """A request's log from an offset (Last-Event-ID on a reconnect), followed while it
        runs, then its final status. Someone else's request answers as a missing one."""
        caller = await self._viewer(request)
        try:
            rid = (await lookup(self.s, caller, request.match_info["id"])).id
        except SkydError as e:
            status = web.HTTPNotFound if e.code is ErrorCode.NOT_FOUND else web.HTTPBadRequest
            raise status(text=e.message + "\n") from None
        try:
            offset = max(0, int(request.headers.get("Last-Event-ID")
                                or request.query.get("offset") or 0))
        except ValueError:
            raise web.HTTPBadRequest(text="offset: a number of bytes\n") from None
        sched = self.s.scheduler
        req = sched.active(rid)
        source = FileLog(sched.log_path(rid), req.topic if req is not None else None,
                         req.done.done if req is not None else lambda: True)
        stream = await EventStream.open(request)
        text = codecs.getincrementaldecoder("utf-8")("replace")
        async with contextlib.aclosing(follow(source, offset)) as chunks:
            async for data in chunks:
                if isinstance(data, str):
                    await stream.send("notice", _json.encode(data))
                    continue
                offset += len(data)
                await stream.send("log", _json.encode(text.decode(data)), event_id=offset)
        if req is not None:
            await req.done
        rec = await record_of(self.s, rid)
        await stream.send("end", _json.encode({"status": rec.status if rec else None,
                                               "error": rec.error if rec else None}),
                          event_id=offset)
        return stream.response


@contextlib.asynccontextmanager
async def serve(daemon: Daemon) -> AsyncIterator[HttpSide]:
    address = daemon.config.http_address
    assert address is not None
    host, port = address
    side = HttpSide(daemon, host)
    # A page's event stream ends when its browser goes (handler_cancellation); at
    # shutdown the board closes them, and what is left gets a second.
    runner = web.AppRunner(side.app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise ListenError(f"cannot serve HTTP on {host}:{port}: {why}") from None
        where = ", ".join(f"http://[{a[0]}]:{a[1]}/" if ":" in a[0] else f"http://{a[0]}:{a[1]}/"
                          for a in runner.addresses)
        log.info("HTTP on %s: /metrics, /healthz, /readyz and the dashboard", where)
        yield side
    finally:
        side.board.close()
        await runner.cleanup()
        metrics.disable()
