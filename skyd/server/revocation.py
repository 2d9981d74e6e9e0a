"""A TCP session lives as long as the token it was opened with: when the token goes
(`skyd token revoke`, a token file edited and read again on SIGHUP), each session opened
with it gets an Error saying so and is closed — a followed log or a watch over it ends
there, rather than streaming on to whoever holds a token an admin took back.

Tokens are told apart by their digests (skyd.server.tokens): the secret is never kept.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from skyd import protocol
from skyd.protocol import Error, ErrorCode

log = logging.getLogger("skyd.server.revocation")

REVOKED = Error(ErrorCode.PERMISSION_DENIED,
                "the token this connection was opened with has been revoked: closing it",
                "ask an admin of the server for a new token (skyd token create)")


class TokenSessions:
    """The live sessions of each token, closed when their token goes."""

    def __init__(self, known: Callable[[str], bool]):
        self._known = known            # whether a token (by digest) is still valid
        self._live: dict[str, dict[asyncio.Task, asyncio.StreamWriter]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def enter(self, token: str, task: asyncio.Task, writer: asyncio.StreamWriter) -> bool:
        """Count a session in; False if its token went while it was logging in (a revoke
        between its check and now: the close was already done, without it)."""
        self._loop = asyncio.get_running_loop()
        if not self._known(token):
            return False
        self._live.setdefault(token, {})[task] = writer
        return True

    def leave(self, token: str, task: asyncio.Task) -> None:
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
