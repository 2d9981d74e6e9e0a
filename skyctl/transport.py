"""Client helpers for TCP (skyctl.tcp wires them in): the token from a file only its
owner can read, and the TLS context that checks the server. Nothing here reads the
environment: callers pass what they resolved."""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path


class TokenFileError(Exception):
    pass


def read_token_file(path: str | os.PathLike) -> str:
    """A token from a file only its owner can read (0600, like ssh's keys)."""
    p = Path(path).expanduser()
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise TokenFileError(f"cannot read the token file {p}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenFileError(f"the token file {p} is readable by others "
                                 f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {p}")
        if st.st_uid != os.geteuid():
            raise TokenFileError(f"the token file {p} belongs to someone else")
        return os.read(fd, 4096).decode().strip()
    finally:
        os.close(fd)


def tls_client_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verify the server: against `ca_file` (a self-signed or private CA's certificate), or
    the system's trusted authorities."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
