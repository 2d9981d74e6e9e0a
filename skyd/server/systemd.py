"""Talking to systemd without libsystemd: sd_notify, socket activation, the watchdog."""

from __future__ import annotations

import asyncio
import os
import socket

SD_LISTEN_FDS_START = 3
_adopted: list[socket.socket] | None = None


def notify(state: str) -> bool:
    """Send a state string to NOTIFY_SOCKET if systemd gave us one."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            s.sendall(state.encode())
            return True
        except OSError:
            return False


def adopted_socket() -> socket.socket | None:
    """The Unix listening socket handed over by socket activation (skyd.socket), if any."""
    return next((s for s in adopted_sockets() if s.family == socket.AF_UNIX), None)


def adopted_tcp() -> socket.socket | None:
    """A TCP listening socket handed over too (skyd.socket's optional ListenStream=PORT)."""
    return next((s for s in adopted_sockets() if s.family in (socket.AF_INET, socket.AF_INET6)),
                None)


def adopted_sockets() -> list[socket.socket]:
    """Every listening socket handed over by socket activation (read once)."""
    global _adopted
    if _adopted is not None:
        return _adopted
    _adopted = []
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return _adopted
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return _adopted
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)      # not for our children
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(0, count)):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        _adopted.append(sock)
    return _adopted


def start_watchdog() -> asyncio.Task | None:
    """Ping systemd's watchdog at half its interval while the loop is alive."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0 or os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
        return None

    async def ping() -> None:
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(usec / 2e6)

    return asyncio.get_running_loop().create_task(ping(), name="sd-watchdog")
