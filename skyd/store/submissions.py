"""The submission_keys table: which request a client's idempotency key was given, so
that a retried submission (after a lost connection or a restart) answers the first
attempt's request instead of creating a second one. Written in the same commit as the
request's own row; removed with it (ON DELETE CASCADE) when retention removes it."""

from __future__ import annotations

import asyncio

from skyd.store.sqlite import Database


class SubmissionRows(Database):
    def add_submission_key(self, uid: int, key: str, request_id: str, op: str,
                           created_at: float) -> asyncio.Future:
        return self._write(
            "INSERT INTO submission_keys (uid, key, request_id, op, created_at)"
            " VALUES (?, ?, ?, ?, ?)", (uid, key, request_id, op, created_at),
            patient=False)      # with a submission: refused with it by a store fault

    async def submission(self, uid: int, key: str) -> tuple[str, str] | None:
        """(request id, op name) the key was given to, or None."""
        rows = await self._all("SELECT request_id, op FROM submission_keys"
                               " WHERE uid = ? AND key = ?", (uid, key))
        return (rows[0][0], rows[0][1]) if rows else None
