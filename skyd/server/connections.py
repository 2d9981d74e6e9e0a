"""Each accepted connection, from either listener: who calls (the kernel says on the Unix
socket, a token on TCP), the per-user cap, then its Session until it ends; and the end of
them all at shutdown.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Callable

from skyd import metrics, protocol
from skyd.identity import peer_caller
from skyd.server.config import Config
from skyd.server.remote import FrontDoor
from skyd.server.revocation import REVOKED, TokenSessions
from skyd.server.services import Services
from skyd.server.session import FrameBudget, Session


class Connections:
    def __init__(self, config: Config, services: Services, frame_budget: FrameBudget,
                 admin_gid: Callable[[], int | None], uncapped: frozenset[int]):
        self.config = config          # connections_per_user read at each connection (reload)
        self.services = services
        self.frame_budget = frame_budget
        self._admin_gid = admin_gid
        self.uncapped = uncapped      # the host's operators: no cap
        self._sessions: set[asyncio.Task] = set()
        self.per_uid: collections.Counter[int] = collections.Counter()   # open, per uid
        # TCP's sessions, closed when their token is revoked or expires.
        self.by_token = TokenSessions(services.tokens.known, services.tokens.expires_at)

    async def end(self) -> None:
        """Cancel every session and wait for them (the listeners are closed by then)."""
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    front: FrontDoor | None = None) -> None:
        """One connection: who calls (the kernel says, or a TCP token), its cap, its session."""
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        uid: int | None = None
        token = ""          # a TCP session's token (its digest): it lives as long as that
        try:
            hello = None
            if front is None:
                caller = peer_caller(writer.get_extra_info("socket"), self._admin_gid())
            elif (got := await front.authenticate(reader, writer)) is not None:
                caller, hello, token = got
                if not self.by_token.enter(token, task, writer):
                    token = ""
                    writer.write(protocol.encode_frame(REVOKED))
                    writer.close()
                    return
            else:
                writer.close()
                return
            if self._admit(caller.uid, writer):
                uid = caller.uid
                await Session(self.services, self.frame_budget, reader, writer, caller).run(hello)
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._sessions.discard(task)
            if token:
                self.by_token.leave(token, task)
            if uid is not None:
                self.per_uid[uid] -= 1
                if self.per_uid[uid] <= 0:
                    del self.per_uid[uid]

    def _admit(self, uid: int, writer: asyncio.StreamWriter) -> bool:
        """Count the connection against its uid's cap (operators have none), or refuse it."""
        cap, n = self.config.connections_per_user, self.per_uid[uid]
        if cap and uid not in self.uncapped and n >= cap:
            metrics.limit_hit("connections_per_user")
            writer.write(protocol.encode_frame(protocol.Error(
                protocol.ErrorCode.BUSY, f"too many connections for you: {n} open (limit "
                                         f"{cap} per user)",
                "close some (followed logs, shells) and retry")))
            writer.close()
            return False
        self.per_uid[uid] += 1
        return True
