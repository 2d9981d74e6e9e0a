"""Who is calling: the caller of a request, peer credentials, tokens, admins.

On a Unix socket the kernel says who is calling (SO_PEERCRED): no password to steal.
Over TCP a bearer token names a user of this host (skyd.server.tokens checks it); from
then on the bearer is that user's Caller, the same as over the socket.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct

import msgspec

_CRED = struct.Struct("3i")


class Caller(msgspec.Struct):
    uid: int
    gid: int
    user: str
    home: str
    admin: bool


class UnknownGroup(ValueError):
    pass


def user_identity(uid: int) -> tuple[str, int, str]:
    """(name, primary gid, home) for a uid; placeholders for ids without an entry."""
    try:
        pw = pwd.getpwuid(uid)
        return pw.pw_name, pw.pw_gid, pw.pw_dir
    except KeyError:
        return f"uid{uid}", uid, "/"


def caller_for(uid: int, admin: bool) -> Caller:
    """The daemon acting on a user's behalf (autostop, the jobs controller)."""
    name, gid, home = user_identity(uid)
    return Caller(uid=uid, gid=gid, user=name, home=home, admin=admin)


def peer_caller(sock: socket.socket, admin_gid: int | None) -> Caller:
    _pid, uid, gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                  _CRED.size))
    name, _, home = user_identity(uid)
    return Caller(uid=uid, gid=gid, user=name, home=home, admin=is_admin(uid, admin_gid))


def token_caller(uid: int, token_admin: bool, admin_gid: int | None) -> Caller:
    """The bearer of a TCP token (skyd.server.tokens): the token's user, exactly as if
    they had called over the socket; an admin if the token says so or the user is one."""
    name, gid, home = user_identity(uid)
    return Caller(uid=uid, gid=gid, user=name, home=home,
                  admin=token_admin or is_admin(uid, admin_gid))


def is_admin(uid: int, admin_gid: int | None) -> bool:
    """Root, the daemon's own user, and members of the admin group."""
    if uid == 0 or uid == os.geteuid():
        return True
    if admin_gid is None:
        return False
    name, gid, _ = user_identity(uid)
    if gid == admin_gid:
        return True
    try:
        return name in grp.getgrgid(admin_gid).gr_mem
    except KeyError:
        return False


def group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise UnknownGroup(f"group {name!r} does not exist") from None
