"""TCP's front door: what a connection must get through before it is a session.

In order, each within `tcp_handshake_timeout`: TLS (when configured: the listener's own,
see Daemon._listen_tcp); the address is not blocked and has not too many connections
still at the door; one small hello frame carrying a bearer token that is valid,
unexpired and names a user of this host. A bad
token is answered only after a fixed delay, counts against its address (blocked for the
rest of the minute past `tcp_auth_failures`), and is logged without any of what was
sent. The session that follows is the Unix socket's, with the token's user as caller;
it lasts as long as its token (skyd.server.revocation closes it when the token goes).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import ssl
import time
from typing import Callable, NamedTuple

import msgspec

from skyd import metrics, protocol
from skyd.identity import Caller, token_caller
from skyd.protocol import Error, ErrorCode, Hello
from skyd.server.config import Config
from skyd.server.tokens import TokenRefused, Tokens, digest

log = logging.getLogger("skyd.server.remote")

BAD_TOKEN_DELAY = 1.0      # seconds before a refused token is answered: guessing stays slow
HELLO_MAX_FRAME = 4096     # a hello with the longest token is ~300 bytes
WINDOW = 60.0              # tcp_auth_failures counts failures in this many seconds
_hello = msgspec.msgpack.Decoder(Hello)


def address_key(host: str) -> str:
    """What per-address limits count by: the IPv4 address, or an IPv6 address's /64 (one
    host gets a whole /64: counting single addresses would be no limit at all)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class AddressGuard:
    """Per-address limits before authentication: connections at the door, and failed
    logins in the last minute. The limits are read from the config at each use (SIGHUP)."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.clock = clock
        self.at_door: collections.Counter[str] = collections.Counter()
        self.failures: dict[str, collections.deque[float]] = {}

    def blocked_for(self, key: str) -> float:
        """Seconds until `key` may try again (0: it may now)."""
        cap = self.config.tcp_auth_failures
        times = self.failures.get(key)
        if not cap or not times:
            return 0.0
        now = self.clock()
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if not times:
            del self.failures[key]
            return 0.0
        return times[0] + WINDOW - now if len(times) >= cap else 0.0

    def enter(self, key: str) -> bool:
        cap = self.config.tcp_preauth_per_address
        if cap and self.at_door[key] >= cap:
            return False
        self.at_door[key] += 1
        return True

    def leave(self, key: str) -> None:
        self.at_door[key] -= 1
        if self.at_door[key] <= 0:
            del self.at_door[key]

    def failed(self, key: str) -> None:
        self.failures.setdefault(key, collections.deque()).append(self.clock())
        if len(self.failures) > 4096:           # many addresses: forget the stale ones
            for k in [k for k in self.failures if not self.blocked_for(k)]:
                self.failures.pop(k, None)


class Refused(Exception):
    """Answered (or not worth answering): close the connection."""


class Admitted(NamedTuple):
    caller: Caller
    hello: Hello
    token: str          # the digest of the token it came with (never the token itself)


class FrontDoor:
    def __init__(self, config: Config, tokens: Tokens, admin_gid: Callable[[], int | None],
                 tls: ssl.SSLContext | None):
        self.config = config
        self.tokens = tokens
        self.admin_gid = admin_gid
        self.tls = tls
        self.guard = AddressGuard(config)

    async def authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                           ) -> Admitted | None:
        """The caller, its hello and its token, or None once the connection was answered
        and refused."""
        peer = writer.get_extra_info("peername")
        host = peer[0] if peer else "?"
        key = address_key(host)
        wait = self.guard.blocked_for(key)
        if wait or not self.guard.enter(key):
            # Refused before anything is read: the cheapest answer to a flood.
            metrics.limit_hit("tcp_auth_failures" if wait else "tcp_preauth_per_address")
            writer.write(protocol.encode_frame(Error(
                ErrorCode.BUSY, "too many failed or unfinished logins from your address",
                f"retry in {max(1, round(wait))} s" if wait else "retry in a moment")))
            return None
        try:
            hello = await self._hello(reader, writer)
            try:
                caller = await asyncio.to_thread(self._check, hello.token)
            except TokenRefused as e:
                self.guard.failed(key)
                metrics.protocol_error("bad_token")
                log.warning("refused a login from %s: %s", host, e)   # never what was sent
                await asyncio.sleep(BAD_TOKEN_DELAY)
                await _send(writer, Error(ErrorCode.PERMISSION_DENIED, str(e),
                                          "ask an admin of the server for a token "
                                          "(skyd token create)"))
                return None
            return Admitted(caller, hello, digest(hello.token))
        except Refused:
            self.guard.failed(key)         # junk, a stalled or broken handshake: an attempt
            return None
        finally:
            self.guard.leave(key)

    async def _hello(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Hello:
        timeout = self.config.tcp_handshake_timeout
        try:
            async with asyncio.timeout(timeout if timeout > 0 else None):
                (size,) = protocol.HEADER.unpack(await reader.readexactly(4))
                if size > HELLO_MAX_FRAME:
                    metrics.limit_hit("handshake_max_frame")
                    await _send(writer, Error(ErrorCode.TOO_LARGE,
                                              f"a first frame of {size} bytes: a hello is at "
                                              f"most {HELLO_MAX_FRAME} bytes"))
                    raise Refused
                body = await reader.readexactly(size)
        except TimeoutError:
            metrics.limit_hit("tcp_handshake_timeout")
            raise Refused from None
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            metrics.protocol_error("tcp_handshake")
            raise Refused from None
        try:
            return _hello.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            metrics.protocol_error("no_hello")
            await _send(writer, Error(ErrorCode.BAD_REQUEST, "a connection starts with a hello "
                                      "frame carrying a token"))
            raise Refused from None

    def _check(self, token: str) -> Caller:
        """In a thread: the file may have changed (a stat), and users come from NSS."""
        self.tokens.refresh()
        rec = self.tokens.verify(token)
        return token_caller(rec.uid, rec.admin, self.admin_gid())


async def _send(writer: asyncio.StreamWriter, msg: Error) -> None:
    try:
        writer.write(protocol.encode_frame(msg))
        await writer.drain()
    except (ConnectionError, OSError):
        pass
