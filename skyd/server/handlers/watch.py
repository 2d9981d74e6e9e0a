"""`watch`: the caller's events as they happen. The handler subscribes; the session
streams the feed (skyd.server.session) and unsubscribes when the client goes."""

from __future__ import annotations

from skyd import protocol
from skyd.identity import Caller
from skyd.protocol import ErrorCode, SkydError, Watch
from skyd.server.dispatch import handles
from skyd.server.handlers.api import ADMINS_ONLY
from skyd.server.services import Services
from skyd.server.watchers import Feed


@handles(protocol.Watch)
async def watch(s: Services, caller: Caller, op: Watch) -> Feed:
    if op.all_users and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED, ADMINS_ONLY.format("events"),
                        "watch your own with: skyctl api watch")
    return s.watchers.subscribe(None if op.all_users else caller.uid, s.config.watch_buffer)
