"""Idempotent submissions: a client sends a key it made with each long or jobs submission;
the key is stored in the same commit as the request's row, so a retry with the same key
(after a lost connection, or a restart of the daemon) answers the request its first
attempt created — if that attempt was accepted — instead of creating a second one.

Keys are each caller's own (one user's key never names another's request) and live as
long as their request (retention removes both). Attempts with one key run one at a
time: a retry that arrives while its first attempt is still being stored waits for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

from skyd.protocol import ErrorCode, RequestRecord, SkydError
from skyd.store import Store

T = TypeVar("T")
WithInsert = Callable[[RequestRecord], Awaitable[object]]


class Earlier:
    """An earlier attempt with the same key was accepted: its request."""

    __slots__ = ("request_id",)

    def __init__(self, request_id: str):
        self.request_id = request_id


class Submissions:
    def __init__(self, store: Store):
        self.store = store
        self._attempts: dict[tuple[int, str], asyncio.Future[None]] = {}   # in flight
        self.replayed = 0         # retries answered with an earlier attempt's request

    async def once(self, uid: int, key: str, op: str,
                   submit: Callable[[WithInsert], Awaitable[T]]) -> T | Earlier:
        """`submit(with_insert)` unless an attempt with this key was accepted before.
        `submit` must commit `with_insert(record)` with the request's row."""
        k = (uid, key)
        while (busy := self._attempts.get(k)) is not None:
            await asyncio.wait([busy])          # not cancelled with this waiter
        done = asyncio.get_running_loop().create_future()
        self._attempts[k] = done
        try:
            found = await self.store.submission(uid, key)
            if found is not None:
                rid, first_op = found
                if first_op != op:
                    raise SkydError(ErrorCode.CONFLICT,
                                    f"idempotency key {key!r} was used for a {first_op} "
                                    f"request ({rid}), not {op}",
                                    "a client makes a new key for each submission")
                self.replayed += 1
                return Earlier(rid)

            def with_insert(rec: RequestRecord) -> Awaitable[object]:
                return self.store.add_submission_key(uid, key, rec.id, op, time.time())
            return await submit(with_insert)
        finally:
            del self._attempts[k]
            done.set_result(None)
