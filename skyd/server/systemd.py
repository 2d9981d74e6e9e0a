"""Talking to systemd without libsystemd: sd_notify, socket activation, the watchdog."""

from __future__ import annotations

import asyncio
import os
import socket

SD_LISTEN_FDS_START = 3
_adopted: socket.socket | None = None
_adopt_checked = False


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
    """The listening socket handed over by socket activation (skyd.socket), if any."""
    global _adopted, _adopt_checked
    if _adopt_checked:
        return _adopted
    _adopt_checked = True
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)      # not for our children
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.setblocking(False)
    _adopted = sock
    return sock


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
