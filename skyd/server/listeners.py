"""Listening sockets: the Unix socket, and TCP with its TLS context (who is on the other
end: skyd.identity; what a TCP client must show first: skyd.server.remote)."""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from skyd.identity import group_id


class ListenError(RuntimeError):
    pass


def bind_unix(path: Path, group: str | None) -> socket.socket:
    """Bind the daemon's socket: 0600, or 0660 for `group`. Refuse if a daemon answers there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(str(path).encode()) > 107:
        raise ListenError(f"socket path {path} is too long for a Unix socket (max 107 bytes)")
    if path.exists() or path.is_symlink():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise ListenError(f"another skyd is already listening on {path}")
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)           # stale socket from a dead daemon
        except OSError as e:
            if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            path.unlink(missing_ok=True)
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)       # never world-reachable, not even between bind and chmod
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    gid = group_id(group)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    else:
        os.chmod(path, 0o600)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


# ---- TCP (tokens; TLS off loopback) --------------------------------------------------------

# Distinct from SkyPilot's API server (46580), so both can run on one VM.
DEFAULT_TCP_PORT = 46590


def parse_tcp_address(text: str) -> tuple[str, int]:
    """(host, port) of `--tcp`: HOST:PORT, [IPv6]:PORT, HOST (port 46590) or PORT alone
    (on 127.0.0.1). HOST is an IP address (0.0.0.0 or :: for every interface) or localhost."""
    text = text.strip()
    if text.isdigit():
        host, port_text = "127.0.0.1", text
    elif text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else str(DEFAULT_TCP_PORT)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, str(DEFAULT_TCP_PORT)      # an IPv4 or a bare IPv6 address
    host = host or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ListenError(f"tcp: {text!r} is not HOST:PORT (a port from 0 to 65535), e.g. "
                          f"127.0.0.1:{DEFAULT_TCP_PORT} or 0.0.0.0:{DEFAULT_TCP_PORT}") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ListenError(f"tcp: {host!r} is not an IP address: give the address to bind, "
                          f"e.g. 0.0.0.0:{DEFAULT_TCP_PORT} (every interface) or "
                          f"127.0.0.1:{DEFAULT_TCP_PORT}") from None
    return host, port


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def require_tls_off_loopback(host: str, port: int, tls: bool) -> None:
    """Tokens never cross a network in clear text: refuse such a bind at start."""
    if not tls and not is_loopback(host):
        raise ListenError(
            f"tcp: refusing to listen on {format_address(host, port)} without TLS: {host} is "
            "not a loopback address, and bearer tokens would cross the network in clear text. "
            "Set tls_cert "
            "and tls_key (a certificate and its key) in the config, or listen on 127.0.0.1, "
            "or let people reach the daemon over ssh:// (no port at all)")


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ListenError(f"tcp: cannot listen on {format_address(host, port)}: "
                          f"{e.strerror or e}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context (TLS 1.2 or newer) with the certificate chain and its key."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_certificate(ctx, cert, key)
    return ctx


def load_certificate(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """(Re)load the chain: new handshakes use it (a renewed certificate on SIGHUP)."""
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as e:
        raise ListenError(f"tls: no such file: {e.filename}") from None
    except (ssl.SSLError, OSError) as e:
        raise ListenError(f"tls: cannot load the certificate {cert} with the key {key}: "
                          f"{getattr(e, 'reason', None) or e}") from None
