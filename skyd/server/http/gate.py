"""Who is asking, when the HTTP side listens off loopback: a bearer token on every request.

Off loopback the kernel cannot say whose process connects, so HTTP does what the TCP
listener does (skyd.server.remote): the same token file (skyd.server.tokens: hashed,
expiry, revocation, read again when it changed), the same identity (the token's user,
an admin if the token or the user is one), the same delay before a refused token is
answered, and the same per-address limits (`tcp_auth_failures`, `tcp_preauth_per_address`).

A token comes in the Authorization header (`Bearer skyd_...`: scripts, Prometheus) or in
the session cookie a browser got from the login form or from `?token=` (skyd.server.http
.login). What was sent is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from aiohttp import web

from skyd import metrics
from skyd.identity import Caller, caller_for
from skyd.protocol import SkydError
from skyd.server.config import Config
from skyd.server.remote import BAD_TOKEN_DELAY, AddressGuard, address_key
from skyd.server.tokens import TokenRefused, Tokens

log = logging.getLogger("skyd.http")

COOKIE = "__Host-skyd-token"    # __Host-: the browser keeps it only if Secure, Path=/, no Domain
RECHECK = 5.0                   # seconds between checks of an open stream's token (revoked?)


class Denied(Exception):
    """Why a request gets no answer but a refusal (safe to tell its sender)."""

    def __init__(self, why: str, retry_after: float = 0.0):
        super().__init__(why)
        self.retry_after = retry_after


def presented(request: web.Request) -> str:
    """The token a request carries: its Authorization header, else the session cookie."""
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(COOKIE, "")


class Gate:
    def __init__(self, config: Config, tokens: Tokens, is_admin: Callable[[int], bool]):
        self.tokens = tokens
        self.is_admin = is_admin
        self.guard = AddressGuard(config)

    async def admit(self, request: web.Request, token: str) -> tuple[Caller, float | None]:
        """The bearer of `token` and when the token expires (None: never), or Denied: at
        once for an address that keeps failing or has too many requests at the door, after
        BAD_TOKEN_DELAY for a refused token."""
        host = request.remote or "?"
        key = address_key(host)
        wait = self.guard.blocked_for(key)
        if wait or not self.guard.enter(key):
            metrics.limit_hit("tcp_auth_failures" if wait else "tcp_preauth_per_address")
            raise Denied("too many failed or unfinished logins from your address",
                         retry_after=max(1.0, round(wait)))
        try:
            try:
                return await asyncio.to_thread(self.check, token)
            except TokenRefused as e:
                if token:            # a token that is wrong is a guess; none at all is not
                    self.guard.failed(key)
                    metrics.protocol_error("bad_token")
                    log.warning("refused an HTTP request from %s: %s", host, e)
                await asyncio.sleep(BAD_TOKEN_DELAY)
                raise Denied(str(e)) from None
        finally:
            self.guard.leave(key)

    def check(self, token: str) -> tuple[Caller, float | None]:
        """In a thread: the file may have changed (a stat), and users come from NSS."""
        try:
            self.tokens.refresh()
        except SkydError as e:
            log.error("HTTP: %s", e.message)
            raise web.HTTPServiceUnavailable(text="the server's token file cannot be read; "
                                                  "tell its admin\n") from None
        rec = self.tokens.verify(token)
        return caller_for(rec.uid, rec.admin or self.is_admin(rec.uid)), rec.expires_at

    async def still_valid(self, request: web.Request) -> bool:
        """For a stream left open: its token not revoked or expired since (checked every
        RECHECK seconds; a stream whose token went ends, the page must log in again)."""
        token = request.get("token")
        if token is None:
            return True          # loopback: the connection's owner does not expire
        now = time.monotonic()
        if now - request["checked"] < RECHECK:
            return True
        request["checked"] = now
        try:
            await asyncio.to_thread(self.check, token)
        except TokenRefused:
            return False
        return True
