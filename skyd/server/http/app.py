"""The HTTP side: /metrics, /healthz, /readyz and the dashboard, one aiohttp application.

Entered on the daemon's exit stack right after the state directory is locked, so that
/readyz answers "starting" through recovery and "draining" through the drain; given back
last. Everything it shows it reads from the daemon's memory in the loop: /metrics through
the collectors, the dashboard through the board; only a page's first look at its finished
work, and a log, are read from the store and the request's log file.

Who asks: on a loopback address, the owner of the connecting socket (skyd.server.http
.access); on any other, TLS and the bearer of a token (skyd.server.http.gate), on every
request but /healthz, /readyz, the login form and the static files (none carries data).
/metrics needs a token there too, any user's: it has no per-user series, but queue depths,
clusters, GPUs and the build are not for anyone on the network.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import ssl
import time
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
from skyd.server.http import login
from skyd.server.http.access import host_allowed, is_loopback, socket_owner
from skyd.server.http.board import Board
from skyd.server.http.collector import CountsCollector, StateCollector
from skyd.server.http.gate import Denied, Gate, presented
from skyd.server.http.sse import HEARTBEAT, EventStream
from skyd.server.listeners import ListenError, tls_context
from skyd.streams import FileLog, follow

if TYPE_CHECKING:
    from skyd.server.face import Served

log = logging.getLogger("skyd.http")
STATIC = Path(__file__).with_name("static")
PROBES = frozenset({"/metrics", "/healthz", "/readyz"})     # no per-user data: anyone local
OPEN = frozenset({"/healthz", "/readyz", "/login"})         # off loopback: no token needed
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_json = msgspec.json.Encoder()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpSide:
    def __init__(self, daemon: Served, host: str):
        self.d = daemon
        self.s = daemon.services
        self.host = host
        self.tls: ssl.SSLContext | None = None
        # Off loopback nobody's socket owner is known: tokens (TLS is serve()'s).
        self.gate = None if is_loopback(host) else Gate(daemon.config, daemon.tokens,
                                                         daemon.is_admin)
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
        self.app.router.add_get("/api/me", self.me)
        if self.gate is not None:
            self.app.router.add_get("/login", self.login_form)
            self.app.router.add_post("/login", self.login)
        self.app.router.add_get("/api/requests/{id}/log", self.request_log)
        self.app.router.add_static("/static/", STATIC, follow_symlinks=False)

    # ---- health ---------------------------------------------------------------------------

    def not_ready(self) -> str | None:
        """Why the daemon does not take requests now; None once recovered and listening."""
        d = self.d
        if d.stopping.is_set() or not d.scheduler.accepting:
            return "draining: finishing running requests before it stops"
        if not d.listening:
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
        try:
            if self.gate is None:
                self._local_only(request)
                response = await handler(request)
            else:
                response = await self._token_door(request) or await handler(request)
        except web.HTTPException as e:
            e.headers.update(HEADERS)
            raise
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    def _local_only(self, request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is None or not is_loopback(peer[0]):
            raise web.HTTPForbidden(text="skyd answers HTTP from this host only\n")
        if request.path not in PROBES and not host_allowed(request.headers.get("Host"), self.host):
            raise web.HTTPMisdirectedRequest(
                text=f"this is skyd's dashboard on {self.host}: open it by that address or "
                     "as localhost, not under another name\n")

    async def _token_door(self, request: web.Request) -> web.Response | None:
        """Off loopback: the request's token, checked (its bearer kept on the request for
        the handler; None: on to the handler), or a refusal; a `?token=` link answered
        with the cookie and a redirect to the same page without it. (No Host check: a page
        of another site, DNS-rebound to us, does not have our cookie.)"""
        if request.method == "GET" and "token" in request.query:
            token = request.query["token"]
            _, expires_at = await self._admit(request, token)
            return login.signed_in(token, expires_at, login.without_token(request))
        if request.path in OPEN or request.path.startswith("/static/"):
            return None
        token = presented(request)
        request["caller"], _ = await self._admit(request, token)
        request["token"], request["checked"] = token, time.monotonic()
        return None

    async def _admit(self, request: web.Request, token: str) -> tuple[Caller, float | None]:
        assert self.gate is not None
        try:
            return await self.gate.admit(request, token)
        except Denied as e:
            if e.retry_after:
                raise web.HTTPTooManyRequests(
                    text=f"{e}: retry in {e.retry_after:.0f} s\n",
                    headers={"Retry-After": f"{e.retry_after:.0f}"}) from None
            headers = {"WWW-Authenticate": 'Bearer realm="skyd"', **login.NO_STORE}
            if request.path == "/":         # a person at the page: the form, with why
                raise web.HTTPUnauthorized(text=login.page_text(str(e)), content_type="text/html",
                                           headers=headers) from None
            raise web.HTTPUnauthorized(text=f"{e}\n", headers=headers) from None

    async def login_form(self, request: web.Request) -> web.Response:
        return login.page("Paste your token: it is kept in a cookie for this site only.")

    async def login(self, request: web.Request) -> web.Response:
        if not login.same_origin(request):
            raise web.HTTPForbidden(text="a login from another site's page\n")
        form = await request.post()
        token = form.get("token")
        try:
            _, expires_at = await self._admit(request, token if isinstance(token, str) else "")
        except web.HTTPUnauthorized as e:
            return login.page(e.text or "", status=401)
        return login.signed_in(str(token), expires_at, "/")

    async def _viewer(self, request: web.Request) -> Caller:
        """The token's bearer, or on loopback the person whose process opened this
        connection (admins see everyone's work)."""
        if self.gate is not None:
            return self._ready(request["caller"])
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
        return self._ready(caller)

    def _ready(self, caller: Caller) -> Caller:
        why = self.not_ready()
        if why is not None:
            raise web.HTTPServiceUnavailable(text=f"skyd is {why}; retry in a moment\n")
        return caller

    # ---- the dashboard ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def me(self, request: web.Request) -> web.Response:
        """Who the page shows work for (the page asks when its stream was refused: a 401
        sends it to the login form)."""
        caller = await self._viewer(request)
        return web.json_response({"user": caller.user, "uid": caller.uid, "admin": caller.admin},
                                 headers=login.NO_STORE)

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
            while not board.closing and await self._still_valid(request):
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
                if not await self._still_valid(request):
                    return stream.response      # the token went: no more of the log
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

    async def _still_valid(self, request: web.Request) -> bool:
        return self.gate is None or await self.gate.still_valid(request)


@contextlib.asynccontextmanager
async def serve(daemon: Served) -> AsyncIterator[HttpSide]:
    address = daemon.config.http_address
    assert address is not None
    host, port = address
    tls = None
    if not is_loopback(host):          # tokens off loopback (HttpSide.gate): never in clear text
        cfg = daemon.config
        if cfg.tls_cert is None or cfg.tls_key is None:
            raise ListenError(f"cannot serve HTTP on {host}:{port} without TLS: set tls_cert "
                              "and tls_key")
        tls = tls_context(cfg.tls_cert, cfg.tls_key)
    side = HttpSide(daemon, host)
    side.tls = tls                     # reloaded on SIGHUP (skyd.server.reload)
    # A page's event stream ends when its browser goes (handler_cancellation); at
    # shutdown the board closes them, and what is left gets a second.
    runner = web.AppRunner(side.app, access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port, ssl_context=tls, reuse_address=True).start()
        except OSError as e:
            why = os.strerror(e.errno) if e.errno else str(e)
            raise ListenError(f"cannot serve HTTP on {host}:{port}: {why}") from None
        scheme = "https" if tls else "http"
        where = ", ".join(f"{scheme}://[{a[0]}]:{a[1]}/" if ":" in a[0]
                          else f"{scheme}://{a[0]}:{a[1]}/" for a in runner.addresses)
        log.info("HTTP on %s: /metrics, /healthz, /readyz and the dashboard%s", where,
                 " (TLS; a token on every request)" if tls else "")
        yield side
    finally:
        side.board.close()
        await runner.cleanup()
        metrics.disable()
