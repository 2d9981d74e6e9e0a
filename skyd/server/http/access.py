"""Who is on the other end of an HTTP connection, and which Host names we answer to.

On a loopback address (off loopback: tokens, skyd.server.http.gate) every client is a
process of this host, and the kernel knows whose: the connecting socket's row in
/proc/net/tcp (or tcp6) — the row whose local address is the client's address:port and
whose remote one is ours — carries the uid that owns it. As with SO_PEERCRED on the Unix socket, there is no password to
steal; a person sees their own work, an admin everyone's.
"""

from __future__ import annotations

import ipaddress
import sys

ESTABLISHED = "01"


def proc_address(host: str, port: int) -> tuple[str, str]:
    """(the /proc/net file, the address as it writes it): each 32-bit word of the address
    in the host's byte order, in hex, then the port; an IPv4-mapped IPv6 address as IPv4."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    raw = addr.packed
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    table = "/proc/net/tcp" if addr.version == 4 else "/proc/net/tcp6"
    return table, f"{raw.hex().upper()}:{port:04X}"


def socket_owner(peer: tuple[str, int], ours: tuple[str, int]) -> int | None:
    """The uid owning the client socket at `peer` connected to us at `ours`; None if no
    such connection is open (it went away, or it is not from this network namespace).
    Blocking (it reads procfs): call it in a thread."""
    table, client = proc_address(*peer)
    table_ours, server = proc_address(*ours)
    tables = {table, table_ours}      # a v4 client of a dual-stack socket: either file
    for path in sorted(tables):
        try:
            with open(path) as f:
                next(f, None)         # the header
                for line in f:
                    fields = line.split()
                    # sl local rem st tx:rx tr:when retrnsmt uid ...
                    if (len(fields) > 7 and fields[1] == client and fields[2] == server
                            and fields[3] == ESTABLISHED):
                        return int(fields[7])
        except OSError:
            continue
    return None


def is_loopback(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def host_allowed(host_header: str | None, bound: str) -> bool:
    """Whether a request's Host names this server by a loopback name. A web page elsewhere
    could make a person's browser ask us for their dashboard under its own domain (DNS
    rebinding) and read it: those requests name that domain, and are refused."""
    if not host_header:
        return False
    name = host_header.strip().lower()
    if name.startswith("["):
        name = name[1:].split("]", 1)[0]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name in ("localhost", bound.lower()) or is_loopback(name)
