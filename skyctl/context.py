"""One command's server and output choices. The connection is made on first use, so
what skyctl can check by itself (arguments, task files, local paths) is checked before
the daemon is asked anything."""

from __future__ import annotations

import argparse

from skyctl.connection import Connection, retry_window
from skyctl.endpoint import resolve
from skyd import protocol


class Ctx:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        # `path`: a Unix socket path, or an ssh:// or tcp:// address (skyctl.endpoint)
        self.path, self.source = resolve(getattr(args, "host", None))
        self.json: bool = getattr(args, "json", False)
        self._conn: Connection | None = None

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            # A daemon that is restarting is waited for (bounded; said on stderr after 2 s).
            self._conn = Connection(self.path, self.source).connect(retry_for=retry_window())
        return self._conn

    @conn.setter
    def conn(self, value: Connection) -> None:
        self._conn = value

    def call(self, op: protocol.Op):
        return self.conn.call(op)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
