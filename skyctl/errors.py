"""What goes wrong talking to skyd, on every transport (the Unix socket, ssh://, tcp://).

A module of its own so that the transports raise them without importing the connection
that imports the transports.
"""

from __future__ import annotations

from skyd.protocol import Error


class Unreachable(Exception):
    """The daemon cannot be reached at all."""


class SocketDenied(Unreachable):
    """The socket exists, but this user may not connect to it."""


class NoDaemon(Unreachable):
    """No daemon has a socket there (a stopped daemon removes its socket)."""


class Restarting(Unreachable):
    """A daemon was there and does not answer now: its socket refuses connections (a
    killed daemon leaves it behind), it hung up before its welcome, or it is draining."""


class ServerError(Exception):
    def __init__(self, error: Error):
        super().__init__(error.message)
        self.error = error
