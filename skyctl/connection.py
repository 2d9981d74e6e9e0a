"""A blocking connection to skyd: connect, handshake, send a request, read its frames."""

from __future__ import annotations

import socket
import time
from typing import Iterator, cast

import msgspec

from skyd import protocol
from skyd.protocol import Error, ErrorCode, Hello, ServerMsg, Submit, Welcome

_dec = msgspec.msgpack.Decoder(ServerMsg)
CLIENT = "skyctl"


class Unreachable(Exception):
    """The daemon cannot be reached at all."""


class SocketDenied(Unreachable):
    """The socket exists, but this user may not connect to it."""


class ServerError(Exception):
    def __init__(self, error: Error):
        super().__init__(error.message)
        self.error = error


class Connection:
    def __init__(self, path: str, source: str = "", timeout: float | None = None):
        self.path = path
        self.source = source
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.welcome: Welcome | None = None

    def connect(self) -> "Connection":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise Unreachable(f"no skyd socket at {self.path} ({self.source}); "
                              "is the daemon running? start it with: skyd serve") from None
        except ConnectionRefusedError:
            sock.close()
            raise Unreachable(f"skyd is not answering at {self.path} ({self.source}); "
                              "the daemon may have stopped") from None
        except PermissionError:
            sock.close()
            raise SocketDenied(f"permission denied on {self.path}; ask an admin to add you to "
                               "the daemon's socket group") from None
        except OSError as e:
            sock.close()
            raise Unreachable(f"cannot connect to {self.path}: {e.strerror or e}") from None
        self.sock = sock
        try:
            try:
                protocol.send_msg(sock, Hello(protocol.PROTOCOL_VERSION, CLIENT))
            except (BrokenPipeError, ConnectionResetError):
                pass        # refused at once (too many connections): its reason is waiting
            reply = self.read()
        except (ConnectionError, OSError) as e:
            self.close()
            raise Unreachable(f"the daemon at {self.path} closed the connection: {e}") from None
        if isinstance(reply, Error):
            self.close()
            raise ServerError(reply)
        if not isinstance(reply, Welcome):
            self.close()
            raise Unreachable(f"unexpected handshake reply from {self.path}")
        self.welcome = reply
        return self

    def read(self) -> ServerMsg:
        assert self.sock is not None
        return _dec.decode(protocol.recv_frame(self.sock))

    def submit(self, op: protocol.Op, wait: bool = True) -> Iterator[ServerMsg]:
        """Send one request; yield its frames up to and including the last one."""
        assert self.sock is not None
        try:
            protocol.send_msg(self.sock, Submit(cast("protocol.AnyOp", op), wait))
        except (BrokenPipeError, ConnectionResetError):
            # The server may refuse a frame before reading all of it (too large): its
            # reason is already waiting in our receive buffer.
            try:
                msg = self.read()
            except (ConnectionError, OSError, msgspec.DecodeError):
                raise ConnectionError("the daemon closed the connection") from None
            yield msg
            return
        while True:
            msg = self.read()
            yield msg
            if isinstance(msg, (protocol.Result, Error)):
                return
            if isinstance(msg, protocol.Accepted) and not wait:
                return

    def call(self, op: protocol.Op):
        """A request whose answer is one value: return it typed, or raise ServerError."""
        for msg in self.submit(op):
            if isinstance(msg, Error):
                raise ServerError(msg)
            if isinstance(msg, protocol.Result):
                if msg.error is not None:
                    raise ServerError(msg.error)
                return msgspec.convert(msg.value, type(op).result) if type(op).result else msg.value
        raise ServerError(Error(ErrorCode.INTERNAL, "the server sent no result"))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reconnect(path: str, source: str, give_up_after: float = 60.0,
              on_wait=None) -> Connection:
    """Keep trying while the daemon restarts; bounded in time."""
    deadline = time.monotonic() + give_up_after
    delay = 0.1
    while True:
        try:
            return Connection(path, source).connect()
        except Unreachable:
            if time.monotonic() >= deadline:
                raise
            if on_wait is not None:
                on_wait()
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
