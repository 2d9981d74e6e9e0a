"""A TCP session lives as long as the token it was opened with: when the token goes
(`skyd token revoke`, a token file edited and read again on SIGHUP) or expires, each
session opened with it gets an Error saying so and is closed — a followed log or a watch
over it ends there, rather than streaming on to whoever holds a token no longer valid.

Tokens are told apart by their digests (skyd.server.tokens): the secret is never kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from skyd import protocol
from skyd.protocol import Error, ErrorCode

log = logging.getLogger("skyd.server.revocation")

REVOKED = Error(ErrorCode.PERMISSION_DENIED,
                "the token this connection was opened with has been revoked: closing it",
                "ask an admin of the server for a new token (skyd token create)")
EXPIRED = Error(ErrorCode.PERMISSION_DENIED,
                "the token this connection was opened with has expired: closing it",
                "ask an admin of the server for a new token (skyd token create)")


class TokenSessions:
    """The live sessions of each token, closed when their token goes."""

    def __init__(self, known: Callable[[str], bool],
                 expires_at: Callable[[str], float | None] = lambda token: None):
        self._known = known            # whether a token (by digest) is still valid
        self._expires_at = expires_at  # when it expires (None: never)
        self._live: dict[str, dict[asyncio.Task, asyncio.StreamWriter]] = {}
        self._expiry: dict[asyncio.Task, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self, token: str, task: asyncio.Task, writer: asyncio.StreamWriter) -> bool:
        """Count a session in; False if its token went while it was logging in (a revoke
        between its check and now: the close was already done, without it)."""
        loop = self._loop = asyncio.get_running_loop()
        if not self._known(token):
            return False
        self._live.setdefault(token, {})[task] = writer
        expires = self._expires_at(token)
        if expires is not None:     # the wall clock's deadline, on the loop's clock
            self._expiry[task] = loop.call_later(max(0.0, expires - time.time()),
                                                 self._expire, token, task)
        return True

    def _expire(self, token: str, task: asyncio.Task) -> None:
        self._expiry.pop(task, None)
        writer = self._live.get(token, {}).pop(task, None)
        if writer is None:
            return
        if not writer.is_closing():
            writer.write(protocol.encode_frame(EXPIRED))
        task.cancel()
        log.info("closed a connection whose token expired")

    def leave(self, token: str, task: asyncio.Task) -> None:
        timer = self._expiry.pop(task, None)
        if timer is not None:
            timer.cancel()
        sessions = self._live.get(token)
        if sessions is not None:
            sessions.pop(task, None)
            if not sessions:
                del self._live[token]

    def revoked(self, tokens: set[str]) -> None:
        """Tokens.on_removed: from any thread (a revoke, a login's refresh run in one)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._close, tokens)

    def _close(self, tokens: set[str]) -> None:
        """In the loop: say why, then end each session (its writer flushes, then closes)."""
        closed = 0
        for token in tokens:
            for task, writer in self._live.pop(token, {}).items():
                if not writer.is_closing():
                    writer.write(protocol.encode_frame(REVOKED))   # whole frames: no interleaving
                task.cancel()
                closed += 1
        if closed:
            log.info("closed %d connection%s opened with a revoked token", closed,
                     "" if closed == 1 else "s")
