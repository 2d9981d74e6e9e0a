"""A blocking connection to skyd: connect, handshake, send a request, read its frames.

The daemon is a Unix socket path (a str), or an ssh:// or tcp:// address (skyctl.endpoint):
ssh:// talks through `ssh VM skyctl dial-stdio` (skyctl.remote), tcp:// through a TLS
socket with a bearer token (skyctl.tcp). Both are imported only when used: a command on
the local socket starts as fast as it always did.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Iterator, cast

import msgspec

from skyctl.endpoint import Address, SshAddress, TcpAddress
# The errors live apart (the transports raise them too); named here for callers as before.
from skyctl.errors import NoDaemon, Restarting, ServerError, SocketDenied, Unreachable
from skyd import protocol
from skyd.protocol import Error, ErrorCode, Hello, ServerMsg, Submit, Welcome

if TYPE_CHECKING:
    from skyctl.remote import SshLink

_dec = msgspec.msgpack.Decoder(ServerMsg)
CLIENT = "skyctl"

RETRY_FOR = 30.0       # seconds a restarting daemon is waited for (connect_timeout)
MISSING_GRACE = 2.0    # ... and a missing socket: a daemon between two lives, or none at all
SAY_AFTER = 2.0        # the wait is told on stderr once it is this long


def retry_window() -> float:
    """How long a command waits for a restarting daemon: SKYD_CONNECT_TIMEOUT, the client
    config's connect_timeout, else RETRY_FOR seconds."""
    from skyctl.endpoint import setting
    window = setting("connect_timeout", "SKYD_CONNECT_TIMEOUT", float)
    return RETRY_FOR if window is None else max(window, 0.0)


class Connection:
    def __init__(self, address: Address, source: str = "", timeout: float | None = None):
        self.address = address
        self.path = str(address)
        self.source = source
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.link: SshLink | None = None        # ssh://: the ssh process behind the socket
        self.welcome: Welcome | None = None

    def connect(self, retry_for: float = 0.0) -> "Connection":
        """Connect and shake hands. With `retry_for`, ride out a daemon restart for that
        many seconds (a missing socket for at most MISSING_GRACE of them)."""
        start = time.monotonic()
        delay, said = 0.05, False
        while True:
            try:
                return self._connect_once()
            except (Restarting, NoDaemon) as e:
                waited = time.monotonic() - start
                limit = retry_for if isinstance(e, Restarting) else min(retry_for, MISSING_GRACE)
                if waited + delay > limit:
                    raise
                if waited >= SAY_AFTER and not said:
                    said = True
                    sys.stderr.write(f"skyd at {self.path} is not answering ({e}); waiting up "
                                     f"to {retry_for:g} s for it to come back...\n")
                    sys.stderr.flush()
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _open(self) -> socket.socket:
        if isinstance(self.address, SshAddress):
            from skyctl.remote import SshLink
            self.link = SshLink(self.address, self.timeout)
            return self.link.sock
        if isinstance(self.address, TcpAddress):
            from skyctl.tcp import open_tcp
            return open_tcp(self.address, self.source, self.timeout)
        return open_unix(self.address, self.source, self.timeout)

    def _connect_once(self) -> "Connection":
        token = ""
        if isinstance(self.address, TcpAddress):
            from skyctl.tcp import token_for
            token = token_for()
        sock = self.sock = self._open()
        try:
            try:
                protocol.send_msg(sock, Hello(protocol.PROTOCOL_VERSION, CLIENT, token=token))
            except (BrokenPipeError, ConnectionResetError):
                pass        # refused at once (too many connections): its reason is waiting
            reply = self.read()
        except (ConnectionError, OSError, msgspec.DecodeError) as e:
            why = self.link.failure() if self.link is not None else None
            self.close()
            raise why or Restarting(f"the daemon at {self.path} closed the connection "
                                    f"before its welcome: {e}") from None
        if isinstance(reply, Error):
            self.close()
            if reply.code is ErrorCode.UNAVAILABLE:     # draining: a restart under way
                raise Restarting(reply.message)
            raise ServerError(reply)
        if not isinstance(reply, Welcome):
            self.close()
            raise Unreachable(f"unexpected handshake reply from {self.path}")
        self.welcome = reply
        return self

    def read(self) -> ServerMsg:
        assert self.sock is not None
        return _dec.decode(protocol.recv_frame(self.sock))

    def submit(self, op: protocol.Op, wait: bool = True,
               follow_job: bool = False) -> Iterator[ServerMsg]:
        """Send one request; yield its frames up to and including the last one.

        A submission (the long and jobs queues) carries a fresh idempotency key: when the
        connection is lost before its first answer (the daemon restarts), it is sent again
        on a new connection, and the daemon answers with the first attempt's request if
        that one was accepted. Over ssh://, the task's local files are shipped first."""
        assert self.sock is not None
        if self.link is not None:
            op = self.link.ship_files(op)
        elif isinstance(self.address, TcpAddress):
            from skyctl.tcp import refuse_local_files
            refuse_local_files(self.address, op)
        keyed = op.schedule in (protocol.Queue.LONG, protocol.Queue.JOBS)
        sub = Submit(cast("protocol.AnyOp", op), wait, follow_job=follow_job,
                     idempotency_key=os.urandom(16).hex() if keyed else "")
        msg = self._first_answer(sub)
        while True:
            yield msg
            if isinstance(msg, (protocol.Result, Error)):
                return
            if isinstance(msg, protocol.Accepted) and not wait:
                return
            msg = self.read()

    def _first_answer(self, sub: Submit) -> ServerMsg:
        while True:
            try:
                return self._send_and_read(sub)
            except (ConnectionError, OSError, msgspec.DecodeError):
                if not sub.idempotency_key:
                    raise ConnectionError("the daemon closed the connection") from None
            self.close()
            self.connect(retry_for=retry_window())

    def _send_and_read(self, sub: Submit) -> ServerMsg:
        assert self.sock is not None
        try:
            protocol.send_msg(self.sock, sub)
        except (BrokenPipeError, ConnectionResetError):
            # The server may refuse a frame before reading all of it (too large): its
            # reason is already waiting in our receive buffer.
            pass
        return self.read()

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
        if self.link is not None:
            self.link.close()
            self.link = None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reconnect(address: Address, source: str, give_up_after: float | None = None) -> Connection:
    """A new connection after one was lost mid-way. A daemon was there, so a missing
    socket is waited for as long as a refusing one (a restart removes it for a moment)."""
    window = retry_window() if give_up_after is None else give_up_after
    deadline = time.monotonic() + window
    while True:
        try:
            return Connection(address, source).connect(max(deadline - time.monotonic(), 0.0))
        except NoDaemon:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


def open_unix(path: str, source: str, timeout: float | None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        sock.close()
        raise NoDaemon(f"no skyd socket at {path} ({source}); "
                       "is the daemon running? start it with: skyd serve") from None
    except ConnectionRefusedError:
        sock.close()
        raise Restarting(f"skyd is not answering at {path} ({source}); "
                         "the daemon may have stopped") from None
    except PermissionError:
        sock.close()
        raise SocketDenied(f"permission denied on {path}; ask an admin to add you to "
                           "the daemon's socket group") from None
    except OSError as e:
        sock.close()
        raise Unreachable(f"cannot connect to {path}: {e.strerror or e}") from None
    return sock
