"""SSH node pools: existing machines a team gives to skyd, in SkyPilot's pool file shape.

```yaml
my-pool:
  user: ubuntu                  # defaults for every host of the pool
  identity_file: ~/.ssh/key
  hosts:
    - 10.0.0.5                  # just an address
    - ip: 10.0.0.6              # or with its own settings
      port: 2222
      user: alice
      identity_file: ~/.ssh/alice
      proxy_jump: bastion
```
The file is read again whenever it changes; a mistake is an error naming the pool, the
host and the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec

HOST_FIELDS = ("ip", "port", "user", "identity_file", "proxy_jump")
POOL_FIELDS = ("hosts", "user", "port", "identity_file", "proxy_jump")


class PoolError(ValueError):
    pass


class PoolHost(msgspec.Struct, frozen=True):
    ip: str
    user: str
    port: int = 22
    identity_file: str = ""
    proxy_jump: str = ""

    @property
    def address(self) -> str:
        return f"{self.user}@{self.ip}:{self.port}"


class Pool(msgspec.Struct, frozen=True):
    name: str
    hosts: list[PoolHost]


def _field(where: str, data: dict, name: str, kind: type, default: Any) -> Any:
    """`data[name]` checked, or `default` (already checked) when it is not given."""
    value = data.get(name)
    if value is None:
        return default
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise PoolError(f"{where}: `{name}` must be a port number, got {value!r}")
        return value
    if not isinstance(value, str) or not value.strip():
        raise PoolError(f"{where}: `{name}` must be a non-empty string, got {value!r}")
    return value.strip()


def _host(pool: str, i: int, raw: Any, defaults: dict) -> PoolHost:
    where = f"pool {pool!r}, host #{i + 1}"
    if isinstance(raw, str):
        raw = {"ip": raw}
    if not isinstance(raw, dict):
        raise PoolError(f"{where}: expected an address or a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(HOST_FIELDS))
    if unknown:
        raise PoolError(f"{where}: unknown field `{unknown[0]}` (known: {', '.join(HOST_FIELDS)})")
    ip = _field(where, raw, "ip", str, None)
    if ip is None:
        raise PoolError(f"{where}: `ip` is required")
    where = f"pool {pool!r}, host {ip}"
    user = _field(where, raw, "user", str, defaults.get("user"))
    if user is None:
        raise PoolError(f"{where}: no `user` (set it on the host or the pool)")
    identity = _field(where, raw, "identity_file", str, defaults.get("identity_file") or "")
    return PoolHost(ip=ip, user=user, port=_field(where, raw, "port", int, defaults.get("port", 22)),
                    identity_file=os.path.expanduser(identity) if identity else "",
                    proxy_jump=_field(where, raw, "proxy_jump", str,
                                      defaults.get("proxy_jump") or ""))


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
        unknown = sorted(set(body) - set(POOL_FIELDS))
        if unknown:
            raise PoolError(f"pool {name!r}: unknown field `{unknown[0]}` "
                            f"(known: {', '.join(POOL_FIELDS)})")
        hosts = body.get("hosts")
        if not isinstance(hosts, list) or not hosts:
            raise PoolError(f"pool {name!r}: `hosts` must be a non-empty list")
        defaults = {k: body.get(k) for k in POOL_FIELDS if k != "hosts"}
        if defaults.get("port") is not None:
            _field(f"pool {name!r}", body, "port", int, 22)
        parsed = [_host(name, i, h, defaults) for i, h in enumerate(hosts)]
        seen = set()
        for h in parsed:
            if (h.ip, h.port) in seen:
                raise PoolError(f"pool {name!r}, host {h.ip}: listed twice")
            seen.add((h.ip, h.port))
        pools[name] = Pool(name=name, hosts=parsed)
    return pools


class NodePools:
    """The pool file, read again when it changes (a stat per use, no restart needed)."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._pools: dict[str, Pool] = {}

    def get(self) -> dict[str, Pool]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._pools = None, {}
            return self._pools
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            import yaml
            try:
                doc = yaml.safe_load(self.path.read_text())
            except yaml.YAMLError as e:
                raise PoolError(f"{self.path} is not valid YAML: {e}") from None
            self._pools = parse(doc, str(self.path))
            self._stamp = stamp
        return self._pools
