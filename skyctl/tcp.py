"""tcp:// — the daemon's TCP listener: TLS, then a hello carrying a bearer token.

The token: SKYD_TOKEN, else the file named by SKYD_TOKEN_FILE or the client config's
`token_file` (0600: a file others may read is refused). TLS: on unless the host is a
loopback address; SKYD_TLS / `tls` (true or false) says otherwise, and a CA file
(SKYD_TLS_CA / `tls_ca`: a self-signed certificate, or a private CA's) turns it on and is
what the server's certificate is checked against; without one, the system's authorities.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl

from skyctl.endpoint import EndpointError, TcpAddress, config_path, setting
from skyctl.errors import Restarting, Unreachable
from skyctl.transport import TokenFileError, read_token_file, tls_client_context


def token_for() -> str:
    token = os.environ.get("SKYD_TOKEN")
    if token:
        return token.strip()
    path = setting("token_file", "SKYD_TOKEN_FILE")
    if not path:
        raise EndpointError("tcp:// needs a token: set SKYD_TOKEN, or token_file in "
                            f"{config_path()} (a 0600 file); an admin makes one on the server "
                            "with: skyd token create NAME")
    try:
        return read_token_file(path)
    except TokenFileError as e:
        raise EndpointError(str(e)) from None


def _wants_tls(host: str) -> bool:
    said = os.environ.get("SKYD_TLS") or setting("tls", kind=bool)
    if isinstance(said, str):
        if said.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise EndpointError(f"SKYD_TLS={said!r}: give 1 or 0")
        return said.lower() in ("1", "true", "yes")
    if said is not None:
        return said
    if setting("tls_ca", "SKYD_TLS_CA"):
        return True
    return not _loopback(host)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def open_tcp(addr: TcpAddress, source: str, timeout: float | None) -> socket.socket:
    where = f"{addr} ({source})"
    try:
        raw = socket.create_connection((addr.host, addr.port), timeout=timeout or 30)
    except ConnectionRefusedError:
        raise Restarting(f"nothing answers at {where}; is skyd serving --tcp there?") from None
    except OSError as e:
        raise Unreachable(f"cannot connect to {where}: {e.strerror or e}") from None
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not _wants_tls(addr.host):
        raw.settimeout(timeout)
        return raw
    try:
        sock = tls_client_context(setting("tls_ca", "SKYD_TLS_CA")).wrap_socket(
            raw, server_hostname=addr.host)
    except ssl.SSLCertVerificationError as e:
        raw.close()
        raise Unreachable(f"the server at {where} failed TLS verification: {e.verify_message}; "
                          "set tls_ca (or SKYD_TLS_CA) to its certificate or CA") from None
    except (ssl.SSLError, OSError) as e:
        raw.close()
        raise Unreachable(f"TLS with {where} failed: {e} (is TLS on there? SKYD_TLS=0 "
                          "for a loopback listener without it)") from None
    sock.settimeout(timeout)
    return sock


def refuse_local_files(addr: TcpAddress, op) -> None:
    """Over TCP nothing carries the laptop's files to the VM yet: say so before queuing
    (on loopback, the daemon's machine is this one, and the paths are good as they are)."""
    task = getattr(op, "task", None)
    if task is not None and (task.workdir or task.file_mounts) and not _loopback(addr.host):
        raise EndpointError("over tcp:// skyctl cannot upload the task's workdir or "
                            "file_mounts; use ssh://user@vm (which uploads them), or put them "
                            "on the VM and name their paths there")
