"""SSH node pools: existing machines a team gives to skyd, in SkyPilot's pool file shape.

```yaml
my-pool:                        # each person logs in as themselves (the default)
  identity_file: ~/.ssh/pool    # optional: in each person's own home
  hosts:
    - 10.0.0.5                  # just an address
    - ip: 10.0.0.6              # or with its own settings
      port: 2222
      proxy_jump: bastion
team-pool:
  shared_login: true            # one login for everyone: users are NOT isolated
  user: ubuntu
  identity_file: /etc/skyd/team-key
  hosts: [10.0.0.7]
```
By default a host is reached as the person who asked, under their own login name with
their own ssh setup (~/.ssh/config, keys, agent): people on one pool cannot read each
other's files or signal each other's jobs. A pool may name one login for everyone only
with `shared_login: true`; then everyone who uses it can reach everyone else's work there.

The file is read again whenever it changes; a mistake is an error naming the pool, the
host and the field. Every field that reaches ssh's command line is checked: a login name,
host or jump host never starts with `-`, holds no spaces or shell characters.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec

from skyd.protocol import NodeInfo

HOST_FIELDS = ("ip", "port", "user", "identity_file", "proxy_jump")
POOL_FIELDS = ("hosts", "user", "port", "identity_file", "proxy_jump", "shared_login")

# What may reach ssh's command line (always after `--` or as an option's value, never
# first with a `-`): a login name, a host name or address, a jump host list.
LOGIN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:%-]*")
JUMP_RE = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_.-]*@)?(?:[A-Za-z0-9_][A-Za-z0-9_.%-]*"
                     r"|\[[0-9A-Fa-f:.%A-Za-z]+\])(?::[0-9]{1,5})?")


class PoolError(ValueError):
    pass


class PoolHost(msgspec.Struct, frozen=True):
    ip: str
    user: str = ""           # the shared login; "" on a per-user pool
    port: int = 22
    identity_file: str = ""  # per-user pools: "~/..." is each person's own
    proxy_jump: str = ""

    @property
    def address(self) -> str:
        return f"{self.user}@{self.ip}:{self.port}" if self.user else f"{self.ip}:{self.port}"

    @property
    def key(self) -> str:
        """The machine, whatever login reaches it: its key in the host ledger."""
        return f"{self.ip}:{self.port}"


class Pool(msgspec.Struct, frozen=True):
    name: str
    hosts: list[PoolHost]
    shared_login: bool = False

    def login(self, h: PoolHost, owner_login: str) -> str:
        """The login a cluster of `owner_login` uses on `h`."""
        return h.user if self.shared_login else owner_login

    def node(self, h: PoolHost, rank: int, path: str, uid: int, owner_login: str) -> NodeInfo:
        """Node `rank` of a cluster of (uid, owner_login) on host `h`. On a per-user pool
        the host is reached as the owner, with the owner's ssh setup (`login_uid`); on a
        shared one with the pool's login, as the daemon (login_uid -1)."""
        if self.shared_login:
            return NodeInfo(rank=rank, ip=h.ip, host=h.address, path=path, user=h.user,
                            port=h.port, identity_file=h.identity_file,
                            proxy_jump=h.proxy_jump)
        return NodeInfo(rank=rank, ip=h.ip, host=h.address, path=path, user=owner_login,
                        port=h.port, identity_file=h.identity_file, proxy_jump=h.proxy_jump,
                        login_uid=uid)


def _field(where: str, data: dict, name: str, kind: type, default: Any) -> Any:
    """`data[name]` checked, or `default` (already checked) when it is not given."""
    value = data.get(name)
    if value is None:
        return default
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise PoolError(f"{where}: `{name}` must be a port number, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise PoolError(f"{where}: `{name}` must be true or false, got {value!r}")
        return value
    if not isinstance(value, str) or not value.strip():
        raise PoolError(f"{where}: `{name}` must be a non-empty string, got {value!r}")
    value = value.strip()
    why = _bad(name, value)
    if why:
        raise PoolError(f"{where}: `{name}` {why}, got {value!r}")
    return value


def _bad(name: str, value: str) -> str:
    """Why `value` is not acceptable for field `name` ("" when it is)."""
    if name == "user" and not LOGIN_RE.fullmatch(value):
        return "must be a login name (letters, digits, `_`, `.`, `-`; not starting with `-`)"
    if name == "ip" and not HOST_RE.fullmatch(value):
        return "must be a host name or address (no spaces, not starting with `-`)"
    if name == "proxy_jump" and not all(JUMP_RE.fullmatch(j) for j in value.split(",")):
        return "must be [user@]host[:port], comma-separated (no spaces, not starting with `-`)"
    if name == "identity_file":
        if not (value.startswith("/") or value.startswith("~/")):
            return "must be an absolute path or start with ~/"
        if any(c < " " or c == "\x7f" for c in value):
            return "must not hold control characters"
    return ""


def _host(pool: str, i: int, raw: Any, defaults: dict, shared: bool) -> PoolHost:
    where = f"pool {pool!r}, host #{i + 1}"
    if isinstance(raw, str):
        raw = {"ip": raw}
    if not isinstance(raw, dict):
        raise PoolError(f"{where}: expected an address or a mapping, got {type(raw).__name__}")
    _string_keys(where, raw)
    unknown = sorted(set(raw) - set(HOST_FIELDS))
    if unknown:
        raise PoolError(f"{where}: unknown field `{unknown[0]}` (known: {', '.join(HOST_FIELDS)})")
    ip = _field(where, raw, "ip", str, None)
    if ip is None:
        raise PoolError(f"{where}: `ip` is required")
    where = f"pool {pool!r}, host {ip}"
    user = _field(where, raw, "user", str, defaults["user"])
    if shared and user is None:
        raise PoolError(f"{where}: no `user` (a shared login: set it on the host or the pool)")
    if not shared and user is not None:
        raise PoolError(f"{where}: `user` names one login for everyone; each person logs in "
                        "as themselves unless the pool says `shared_login: true` (then users "
                        "of the pool are not isolated from each other)")
    identity = _field(where, raw, "identity_file", str, defaults["identity_file"] or "")
    if shared and identity:
        identity = os.path.expanduser(identity)   # one key for everyone
    # per-user: `~/` stays, for each person's own ssh to expand in their own home
    return PoolHost(ip=ip, user=user or "",
                    port=_field(where, raw, "port", int, defaults["port"]),
                    identity_file=identity,
                    proxy_jump=_field(where, raw, "proxy_jump", str,
                                      defaults["proxy_jump"] or ""))


def _string_keys(where: str, mapping: dict) -> None:
    """Field names are words: YAML also allows `null:`, `1:` or `[a]:` as keys."""
    odd = [k for k in mapping if not isinstance(k, str)]
    if odd:
        raise PoolError(f"{where}: field names must be words, got {odd[0]!r}")


def parse(doc: Any, source: str = "node pools") -> dict[str, Pool]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise PoolError(f"{source}: expected a mapping of pool names to pools")
    pools = {}
    for name, body in doc.items():
        if not isinstance(name, str) or not name:
            raise PoolError(f"{source}: pool names must be strings, got {name!r}")
        if not isinstance(body, dict):
            raise PoolError(f"pool {name!r}: expected a mapping with `hosts`")
        _string_keys(f"pool {name!r}", body)
        unknown = sorted(set(body) - set(POOL_FIELDS))
        if unknown:
            raise PoolError(f"pool {name!r}: unknown field `{unknown[0]}` "
                            f"(known: {', '.join(POOL_FIELDS)})")
        hosts = body.get("hosts")
        if not isinstance(hosts, list) or not hosts:
            raise PoolError(f"pool {name!r}: `hosts` must be a non-empty list")
        where = f"pool {name!r}"
        shared = _field(where, body, "shared_login", bool, False)
        defaults = {k: _field(where, body, k, str, None)
                    for k in ("user", "identity_file", "proxy_jump")}
        defaults["port"] = _field(where, body, "port", int, 22)
        if not shared and defaults["user"] is not None:
            raise PoolError(f"{where}: `user` names one login for everyone; each person logs "
                            "in as themselves unless the pool says `shared_login: true` (then "
                            "users of the pool are not isolated from each other)")
        parsed = [_host(name, i, h, defaults, shared) for i, h in enumerate(hosts)]
        seen = set()
        for h in parsed:
            if (h.ip, h.port) in seen:
                raise PoolError(f"pool {name!r}, host {h.ip}: listed twice")
            seen.add((h.ip, h.port))
        pools[name] = Pool(name=name, hosts=parsed, shared_login=shared)
    return pools


class NodePools:
    """The pool file, read again when it changes (a stat per use, no restart needed)."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._pools: dict[str, Pool] = {}
        self.version = 0        # moves each time the file is read again (it changed)

    def get(self) -> dict[str, Pool]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None:
                self.version += 1
            self._stamp, self._pools = None, {}
            return self._pools
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            import yaml
            try:
                doc = yaml.safe_load(self.path.read_text())
            except yaml.YAMLError as e:
                raise PoolError(f"{self.path} is not valid YAML: {e}") from None
            except UnicodeDecodeError as e:
                raise PoolError(f"{self.path} is not UTF-8 text (byte {e.start}: "
                                f"{e.object[e.start:e.start + 1]!r})") from None
            except OSError as e:
                raise PoolError(f"cannot read {self.path}: {e.strerror}") from None
            self._pools = parse(doc, str(self.path))
            self._stamp = stamp
            self.version += 1
        return self._pools


def _reach(n: NodeInfo) -> tuple:
    return (n.rank, n.ip, n.port, n.host, n.path, n.user, n.identity_file, n.proxy_jump,
            n.login_uid)


def same_hosts(old: list[NodeInfo], new: list[NodeInfo]) -> bool:
    """Do `new` nodes (reported by a worker, which runs as a user) keep every field that
    says which host is reached, how and as whom? Only what was probed may change."""
    return sorted(map(_reach, old)) == sorted(map(_reach, new))
