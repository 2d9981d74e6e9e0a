"""`api status | logs | cancel | info`: requests about requests. Coroutines in the loop."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from skyd import protocol
from skyd.protocol import (ApiCancel, ApiInfo, ApiLogs, ApiStatus, ErrorCode, RequestRecord,
                           SkydError)
from skyd.scheduler import Caller, Request, current_request

if TYPE_CHECKING:
    from skyd.daemon import Daemon

_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")
MAX_LIMIT = 10_000


async def resolve(d: "Daemon", prefix: str) -> str:
    """A full request id from any unique prefix."""
    prefix = prefix.strip().lower()
    if not _PREFIX.match(prefix):
        raise SkydError(ErrorCode.BAD_REQUEST, f"{prefix!r} is not a request id (hex digits and '-')")
    s = d.scheduler
    found = {rid for rid in (*s.long_pending, *s.long_running, *s.short_live)
             if rid.startswith(prefix)}
    found.update(r.id for r in s.short_ring if r.id.startswith(prefix))
    found.update(await d.store.request_ids_with_prefix(prefix, limit=10))
    if not found:
        raise SkydError(ErrorCode.NOT_FOUND, f"no request matches {prefix!r}",
                        "list requests with: skyctl api status -a")
    if len(found) > 1:
        shown = ", ".join(sorted(found)[:5])
        raise SkydError(ErrorCode.AMBIGUOUS, f"{prefix!r} matches {len(found)} requests: {shown}",
                        "type more of the id")
    return found.pop()


async def record_of(d: "Daemon", rid: str) -> RequestRecord | None:
    req = d.scheduler.active(rid)
    if req is not None:
        return req.record
    for r in d.scheduler.short_ring:
        if r.id == rid:
            return r
    row = await d.store.get_request(rid)
    return row[0] if row else None


def _visible(caller: Caller, rec: RequestRecord, all_users: bool) -> bool:
    return all_users or rec.uid == caller.uid


async def api_status(d: "Daemon", caller: Caller, op: ApiStatus) -> list[RequestRecord]:
    limit = max(1, min(op.limit, MAX_LIMIT))
    if op.request_ids:
        out = []
        for prefix in op.request_ids:
            rec = await record_of(d, await resolve(d, prefix))
            if rec is not None:
                out.append(rec)
        return out
    s = d.scheduler
    me = current_request.get()
    active = [r.record for r in (*s.long_running.values(), *s.long_pending.values(),
                                 *s.short_live.values())
              if _visible(caller, r.record, op.all_users) and r.record.id != me]
    if not op.all_statuses:
        active.sort(key=lambda r: r.created_at, reverse=True)
        return active[:limit]
    uid = None if op.all_users else caller.uid
    merged = {r.id: r for r in await d.store.list_requests(uid, limit)}
    merged.update((r.id, r) for r in active)
    merged.update((r.id, r) for r in s.short_ring if _visible(caller, r, op.all_users))
    return sorted(merged.values(), key=lambda r: r.created_at, reverse=True)[:limit]


def _owned(caller: Caller, rec: RequestRecord) -> None:
    if rec.uid != caller.uid and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED,
                        f"request {rec.id} belongs to {rec.user}; only they or an admin may "
                        "cancel it")


async def api_cancel(d: "Daemon", caller: Caller, op: ApiCancel) -> list[str]:
    s = d.scheduler
    if op.all_users and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED, "only an admin may cancel every user's requests")
    targets: list[Request] = []
    if op.all or op.all_users:
        for req in (*s.long_running.values(), *s.long_pending.values()):
            if op.all_users or req.record.uid == caller.uid:
                targets.append(req)
    elif not op.request_ids:
        raise SkydError(ErrorCode.BAD_REQUEST, "name the requests to cancel, or pass --all")
    else:
        for prefix in op.request_ids:
            rid = await resolve(d, prefix)
            rec = await record_of(d, rid)
            if rec is None:
                raise SkydError(ErrorCode.NOT_FOUND, f"no request {rid}")
            _owned(caller, rec)
            req = s.active(rid)
            if req is None or req.record.queue is not protocol.Queue.LONG:
                if len(op.request_ids) == 1:
                    raise SkydError(ErrorCode.CONFLICT,
                                    f"request {rid} already finished ({rec.status.value})")
                continue
            targets.append(req)
    return [req.record.id for req in targets if await s.cancel(req)]


async def api_info(d: "Daemon", caller: Caller, op: ApiInfo) -> protocol.ServerInfo:
    return d.info(caller)


async def api_logs_source(d: "Daemon", caller: Caller, op: ApiLogs) -> str:
    """Resolve which request's log to stream; the session streams it."""
    rid = await resolve(d, op.request_id)
    rec = await record_of(d, rid)
    if rec is None:
        raise SkydError(ErrorCode.NOT_FOUND, f"no request {rid}")
    if rec.uid != caller.uid and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED, f"request {rid} belongs to {rec.user}")
    return rid

