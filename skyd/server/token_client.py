"""What `skyd token create | list | revoke` does (its command line: token_cli.py).

Through the daemon when it answers on its socket (it checks that the caller is an admin,
from the socket's peer credentials); when no daemon runs (an install, a stopped
service), root works on the token file directly, under the same rules and lock.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import msgspec

from skyd import protocol
from skyd.identity import caller_for
from skyd.protocol import Error, TokenCreate, TokenList, TokenRecord, TokenRevoke
from skyd.server import config
from skyd.server.install import CONFIG as SYSTEM_CONFIG    # the file `skyd install` writes
from skyd.server.tokens import Tokens, parse_expiry

_dec = msgspec.msgpack.Decoder(protocol.ServerMsg)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = _config(args)
        op = _op(args)
    except (config.ConfigError, ValueError) as e:
        print(f"skyd token: error: {e}", file=sys.stderr)
        return 2
    try:
        value = _through_daemon(cfg.socket_path, op)
    except _NoDaemon as e:
        if os.geteuid() != 0:
            print(f"skyd token: error: {e}; without a daemon, only root can change the tokens "
                  f"(sudo skyd token ...)", file=sys.stderr)
            return 1
        try:
            value = _directly(Tokens(cfg.tokens_path), op)
        except protocol.SkydError as err:
            return _failed(err.to_wire())
    except _Refused as e:
        return _failed(e.error)
    _print(args, op, value)
    return 0


def _config(args: argparse.Namespace) -> config.Config:
    path = args.config
    if path is None and args.state_dir is None and "SKYD_CONFIG" not in os.environ \
            and SYSTEM_CONFIG.exists():
        path = SYSTEM_CONFIG
    flags = {"state_dir": args.state_dir, "socket": args.socket}
    return config.load({k: v for k, v in flags.items() if v is not None}, config_file=path)


def _op(args: argparse.Namespace) -> protocol.Op:
    if args.token_command == "create":
        try:
            return msgspec.convert({"op": "token_create", "name": args.name,
                                    "user": args.user or "", "admin": args.admin,
                                    "expires_in": parse_expiry(args.expires)}, TokenCreate)
        except msgspec.ValidationError:
            raise ValueError(f"token name {args.name!r}: use letters, digits and . _ @ - "
                             "(at most 64, starting with a letter or digit)") from None
    if args.token_command == "list":
        return TokenList()
    return TokenRevoke(name=args.name)


class _NoDaemon(Exception):
    pass


class _Refused(Exception):
    def __init__(self, error: Error):
        self.error = error


def _through_daemon(path: Path, op: protocol.Op):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise _NoDaemon(f"no daemon answers at {path}") from None
        except PermissionError:
            raise _NoDaemon(f"no access to the daemon's socket {path}") from None
        protocol.send_msg(sock, protocol.Hello(protocol.PROTOCOL_VERSION, "skyd-token"))
        for msg in _frames(sock, op):
            if isinstance(msg, Error):
                raise _Refused(msg)
            if isinstance(msg, protocol.Result):
                if msg.error is not None:
                    raise _Refused(msg.error)
                return msgspec.convert(msg.value, type(op).result)
        raise _Refused(Error(protocol.ErrorCode.INTERNAL, "the daemon sent no result"))
    finally:
        sock.close()


def _frames(sock: socket.socket, op: protocol.Op):
    welcome = _dec.decode(protocol.recv_frame(sock))
    if not isinstance(welcome, protocol.Welcome):
        yield welcome
        return
    protocol.send_msg(sock, protocol.Submit(op))   # type: ignore[arg-type]
    while True:
        msg = _dec.decode(protocol.recv_frame(sock))
        yield msg
        if isinstance(msg, (protocol.Result, Error)):
            return


def _directly(tokens: Tokens, op: protocol.Op):
    root = caller_for(os.geteuid(), admin=True)
    if isinstance(op, TokenCreate):
        return tokens.create(root, op)
    if isinstance(op, TokenRevoke):
        return tokens.revoke(root, op.name)
    return tokens.listing(root)


def _failed(error: Error) -> int:
    print(f"skyd token: error: {error.message}", file=sys.stderr)
    if error.hint:
        print(f"hint: {error.hint}", file=sys.stderr)
    return 1


def _print(args: argparse.Namespace, op: protocol.Op, value) -> None:
    if isinstance(op, TokenCreate):
        rec: TokenRecord = value
        print(rec.token)
        print(f"token {rec.name!r} (id {rec.id}) acts as {rec.user} (uid {rec.uid})"
              f"{', as an admin' if rec.admin else ''}; expires {_when(rec.expires_at)}.\n"
              "It is shown once: store it now. Clients read it from SKYD_TOKEN, or from a "
              "0600 file named in their config.", file=sys.stderr)
    elif isinstance(op, TokenRevoke):
        print(f"token {value.name!r} (id {value.id}) revoked: refused from now on, and its "
              "open connections are closed")
    elif args.json:
        print(json.dumps([msgspec.to_builtins(r) for r in value], indent=2))
    else:
        rows = [("ID", "NAME", "USER", "ADMIN", "CREATED", "BY", "EXPIRES")]
        now = time.time()
        rows += [(r.id, r.name, r.user, "yes" if r.admin else "-", _when(r.created_at),
                  r.created_by, _when(r.expires_at) + (" (expired)" if r.expires_at is not None
                                                       and r.expires_at <= now else ""))
                 for r in value]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _when(ts: float | None) -> str:
    return "never" if ts is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
