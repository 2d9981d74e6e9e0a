"""Where the daemon is: --host, then SKYD_HOST, then the client config file, then the default.

An address is a Unix socket path (unix:///path, or /path), `ssh://[USER@]HOST[:PORT][/SOCKET]`
(skyctl runs `ssh HOST skyctl dial-stdio` and talks through it: the SSH login is the
identity) or `tcp://HOST[:PORT]` (a bearer token, TLS off loopback). A Unix socket is
returned as its path (a str), as it always was; the others as SshAddress and TcpAddress.

The client config is TOML (`~/.config/skyctl/config.toml`): tomllib is in the standard
library and cheap to import. Its keys: host; for ssh://, ssh_command and remote_skyctl;
for tcp://, token_file, tls, tls_ca; connect_timeout and upload_limit_mb. os.path rather
than pathlib: this runs on every start of skyctl, and pathlib alone costs ~3 ms to import.
"""

from __future__ import annotations

import os

SYSTEM_SOCKET = "/run/skyd/skyd.sock"
DEFAULT_TCP_PORT = 46590          # the server's (skyd.server.listeners), not SkyPilot's 46580
FORMS = "unix:///path/to/skyd.sock, ssh://user@vm[:port] or tcp://host[:port]"


class EndpointError(ValueError):
    pass


class SshAddress:
    """ssh://[USER@]HOST[:PORT][/SOCKET]: SOCKET is the daemon's socket on the VM (default:
    what skyctl there finds by itself)."""

    __slots__ = ("user", "host", "port", "socket", "url")

    def __init__(self, user: str | None, host: str, port: int | None, socket: str | None,
                 url: str):
        self.user, self.host, self.port, self.socket, self.url = user, host, port, socket, url

    def __str__(self) -> str:
        return self.url


class TcpAddress:
    __slots__ = ("host", "port", "url")

    def __init__(self, host: str, port: int, url: str):
        self.host, self.port, self.url = host, port, url

    def __str__(self) -> str:
        return self.url


Address = str | SshAddress | TcpAddress


def user_socket() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "skyd", "skyd.sock")


def config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "skyctl", "config.toml")


_cached: tuple[str, int, dict] | None = None      # (path, mtime, keys): read once a process


def client_config() -> dict:
    """The client config file's keys ({} when there is none)."""
    global _cached
    path = config_path()
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        return {}
    if _cached is None or _cached[:2] != (path, mtime):
        import tomllib
        try:
            with open(path, "rb") as f:
                _cached = (path, mtime, tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise EndpointError(f"cannot read {path}: {e}") from None
    return _cached[2]


def setting(key: str, env: str | None = None, kind: type = str):
    """A client setting: its environment variable (when set and not empty), else the
    config file's key, else None; checked to be of `kind`."""
    raw = os.environ.get(env) if env else None
    if raw:
        if kind is str:
            return raw
        try:
            return kind(raw)
        except ValueError:
            raise EndpointError(f"{env}={raw!r} is not a {kind.__name__}") from None
    value = client_config().get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind):
        raise EndpointError(f"{config_path()}: `{key}` must be a {kind.__name__}")
    return value


def _from_config() -> str | None:
    host = client_config().get("host")
    if host is not None and not isinstance(host, str):
        raise EndpointError(f"{config_path()}: `host` must be a string like {FORMS}")
    return host


def resolve(flag: str | None) -> tuple[Address, str]:
    """(address, where it came from). An empty --host is a mistake (an unset variable
    in a script), not a request for the default; an empty SKYD_HOST counts as unset."""
    if flag is not None:
        if not flag.strip():
            raise EndpointError("--host is empty; give unix:///path/to/skyd.sock, or leave "
                                "it out for the default")
        return parse(flag), "--host"
    env = os.environ.get("SKYD_HOST")
    if env:
        return parse(env), "SKYD_HOST"
    configured = _from_config()
    if configured:
        return parse(configured), config_path()
    return local_default()


def local_default() -> tuple[str, str]:
    mine = user_socket()
    if os.path.exists(mine) or not os.path.exists(SYSTEM_SOCKET):
        return mine, "the per-user default"
    return SYSTEM_SOCKET, "the system default"


def parse(address: str) -> Address:
    if address.startswith("unix://"):
        path = address[len("unix://"):]
    elif address.startswith("/") or address.startswith("."):
        path = address
    elif address.startswith("ssh://"):
        return _ssh(address)
    elif address.startswith("tcp://"):
        return _tcp(address)
    elif "://" in address:
        scheme = address.split("://", 1)[0]
        raise EndpointError(f"{scheme}:// addresses are not supported; use {FORMS}")
    else:
        raise EndpointError(f"cannot understand server address {address!r}; use {FORMS}")
    if not path:
        raise EndpointError("empty socket path in server address")
    return os.path.expanduser(path)


def _ssh(address: str) -> SshAddress:
    from urllib.parse import unquote, urlsplit
    try:
        u = urlsplit(address)
        port = u.port
    except ValueError as e:
        raise EndpointError(f"{address!r}: {e}; use ssh://user@vm[:port]") from None
    host, user = u.hostname or "", unquote(u.username) if u.username else None
    # Both reach ssh's command line: nothing in them may read as an option or a second word.
    if not host or host.startswith("-") or not _plain(host, "-.:%_"):
        raise EndpointError(f"{address!r}: no host name, or not one; use ssh://user@vm[:port]")
    if user is not None and (not user or user.startswith("-") or not _plain(user, "-._$")):
        raise EndpointError(f"{address!r}: {user!r} is not a login name")
    if u.password is not None or u.query or u.fragment:
        raise EndpointError(f"{address!r}: ssh:// takes no password, query or fragment "
                            "(ssh asks for a password itself, or uses your keys)")
    socket = unquote(u.path) if u.path not in ("", "/") else None
    return SshAddress(user, host, port, socket, address)


def _tcp(address: str) -> TcpAddress:
    from urllib.parse import urlsplit
    try:
        u = urlsplit(address)
        port = u.port
    except ValueError as e:
        raise EndpointError(f"{address!r}: {e}; use tcp://host[:port]") from None
    if not u.hostname or u.username or u.path not in ("", "/") or u.query or u.fragment:
        raise EndpointError(f"{address!r}: use tcp://host[:port] (the token goes in "
                            "SKYD_TOKEN or the config's token_file, never in the address)")
    return TcpAddress(u.hostname, port or DEFAULT_TCP_PORT, address)


def _plain(text: str, extra: str) -> bool:
    return all(c.isalnum() or c in extra for c in text)
