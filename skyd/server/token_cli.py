"""`skyd token create | list | revoke`: the command line (what it does: token_client.py).

Standard library only: `skyd install` builds this parser on a VM with nothing installed yet.
"""

from __future__ import annotations

import argparse

from skyd.server.install import CONFIG as SYSTEM_CONFIG     # the file `skyd install` writes


def add_parser(sub) -> None:
    p = sub.add_parser("token", help="bearer tokens for TCP clients (admins only)",
                       description="Create, list and revoke the bearer tokens that TCP clients "
                                   "(skyctl with SKYD_HOST=tcp://..., CI) authenticate with. "
                                   "Each acts as a Unix user of this host: work submitted with "
                                   "it runs as that user. Admins only (root, the admin group); "
                                   "a token for another user needs root.")
    p.add_argument("--config", help=f"the daemon's config file (default: {SYSTEM_CONFIG} if it "
                                     "exists, else the personal daemon's)")
    p.add_argument("--state-dir", help="the daemon's state directory")
    p.add_argument("--socket", help="the daemon's socket")
    ops = p.add_subparsers(dest="token_command", required=True)
    c = ops.add_parser("create", help="create a token; its secret is printed once, on stdout")
    c.add_argument("name", help="a name for it (letters, digits, . _ @ -), e.g. ci-main")
    c.add_argument("--user", help="the user it acts as (default: you; another user needs root)")
    c.add_argument("--admin", action="store_true", help="its bearer is an admin")
    c.add_argument("--expires", default="90d",
                   help="lifetime: 30d, 12h, 2w, or never (default 90d)")
    ls = ops.add_parser("list", help="list tokens (never their secrets)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    r = ops.add_parser("revoke", help="revoke a token: refused from now on; its open "
                                        "connections are closed")
    r.add_argument("name", help="its name or id")


def run(args: argparse.Namespace) -> int:
    from skyd.server import token_client
    return token_client.run(args)
