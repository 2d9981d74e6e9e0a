"""`api status | logs | cancel | info`: requests about requests. Coroutines in the loop."""

from __future__ import annotations

import re

from skyd import protocol
from skyd.protocol import (ApiCancel, ApiInfo, ApiLogs, ApiStatus, ErrorCode, RequestRecord,
                           SkydError)
from skyd.identity import Caller
from skyd.server.dispatch import handles
from skyd.server.services import Services
from skyd.requests.scheduler import Request, current_request


_PREFIX = re.compile(r"[0-9a-f-]{1,36}")
MAX_LIMIT = 10_000
ADMINS_ONLY = "admins only: -u (every user's {}) needs an admin"


async def resolve(s: Services, caller: Caller, prefix: str) -> str:
    """A full request id from any unique prefix, among the requests the caller may see
    (their own; an admin's: everyone's). Someone else's id answers as a missing one."""
    prefix = prefix.strip().lower()
    if not _PREFIX.fullmatch(prefix):
        raise SkydError(ErrorCode.BAD_REQUEST, f"{prefix!r} is not a request id (hex digits and '-')")
    sched = s.scheduler
    uid = None if caller.admin else caller.uid
    found = {rid for rid, req in sched.live().items()
             if rid.startswith(prefix) and uid in (None, req.record.uid)}
    found.update(r.id for r in sched.short_ring if r.id.startswith(prefix) and uid in (None, r.uid))
    found.update(await s.store.request_ids_with_prefix(prefix, limit=10, uid=uid))
    if not found:
        raise _missing(prefix)
    if len(found) > 1:
        shown = ", ".join(sorted(found)[:5])
        raise SkydError(ErrorCode.AMBIGUOUS, f"{prefix!r} matches {len(found)} requests: {shown}",
                        "type more of the id")
    return found.pop()


def _missing(prefix: str) -> SkydError:
    return SkydError(ErrorCode.NOT_FOUND, f"no request matches {prefix!r}",
                     "list requests with: skyctl api status -a")


async def lookup(s: Services, caller: Caller, prefix: str) -> RequestRecord:
    """The caller's request (any request, for an admin) named by an id or unique prefix;
    anyone else's answers exactly as one that does not exist."""
    rec = await record_of(s, await resolve(s, caller, prefix))
    if rec is None or not (caller.admin or rec.uid == caller.uid):
        raise _missing(prefix.strip().lower())
    return rec


async def record_of(s: Services, rid: str) -> RequestRecord | None:
    req = s.scheduler.active(rid)
    if req is not None:
        return req.record
    for r in s.scheduler.short_ring:
        if r.id == rid:
            return r
    row = await s.store.get_request(rid)
    return row[0] if row else None


def _visible(caller: Caller, rec: RequestRecord, all_users: bool) -> bool:
    return all_users or rec.uid == caller.uid


@handles(protocol.ApiStatus)
async def api_status(s: Services, caller: Caller, op: ApiStatus) -> list[RequestRecord]:
    if op.all_users and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED, ADMINS_ONLY.format("requests"),
                        "list your own with: skyctl api status")
    limit = max(1, min(op.limit, MAX_LIMIT))
    if op.request_ids:
        return [await lookup(s, caller, prefix) for prefix in op.request_ids]
    sched = s.scheduler
    me = current_request.get()
    active = [r.record for r in sched.live().values()
              if _visible(caller, r.record, op.all_users) and r.record.id != me]
    if not op.all_statuses:
        active.sort(key=lambda r: r.created_at, reverse=True)
        return active[:limit]
    uid = None if op.all_users else caller.uid
    merged = {r.id: r for r in await s.store.list_requests(uid, limit)}
    merged.update((r.id, r) for r in active)
    merged.update((r.id, r) for r in sched.short_ring if _visible(caller, r, op.all_users))
    return sorted(merged.values(), key=lambda r: r.created_at, reverse=True)[:limit]


@handles(protocol.ApiCancel)
async def api_cancel(s: Services, caller: Caller, op: ApiCancel) -> list[str]:
    sched = s.scheduler
    if op.all_users and not caller.admin:
        raise SkydError(ErrorCode.PERMISSION_DENIED, "only an admin may cancel every user's requests")
    targets: list[Request] = []
    if op.all or op.all_users:
        for req in (*sched.long_running.values(), *sched.long_pending.values()):
            if op.all_users or req.record.uid == caller.uid:
                targets.append(req)
    elif not op.request_ids:
        raise SkydError(ErrorCode.BAD_REQUEST, "name the requests to cancel, or pass --all")
    else:
        for prefix in op.request_ids:
            rec = await lookup(s, caller, prefix)
            rid = rec.id
            found = sched.active(rid)
            if found is None or found.record.queue is not protocol.Queue.LONG:
                if len(op.request_ids) == 1:
                    raise SkydError(ErrorCode.CONFLICT,
                                    f"request {rid} already finished ({rec.status.value})")
                continue
            targets.append(found)
    return [req.record.id for req in targets if await sched.cancel(req)]


@handles(protocol.ApiInfo)
async def api_info(s: Services, caller: Caller, op: ApiInfo) -> protocol.ServerInfo:
    return s.info(caller)


@handles(protocol.ApiLogs)
async def api_logs_source(s: Services, caller: Caller, op: ApiLogs) -> str:
    """Resolve which request's log to stream; the session streams it."""
    return (await lookup(s, caller, op.request_id)).id

