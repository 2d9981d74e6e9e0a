"""Where the daemon is: --host, then SKYD_HOST, then the client config file, then the default.

The client config is TOML (`~/.config/skyctl/config.toml`, key `host`): tomllib is in the
standard library and cheap to import. os.path rather than pathlib: this runs on every
start of skyctl, and pathlib alone costs ~3 ms to import.
"""

from __future__ import annotations

import os

SYSTEM_SOCKET = "/run/skyd/skyd.sock"


class EndpointError(ValueError):
    pass


def user_socket() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "skyd", "skyd.sock")


def config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return os.path.join(base, "skyctl", "config.toml")


def _from_config() -> str | None:
    path = config_path()
    if not os.path.exists(path):
        return None
    import tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EndpointError(f"cannot read {path}: {e}") from None
    host = data.get("host")
    if host is not None and not isinstance(host, str):
        raise EndpointError(f"{path}: `host` must be a string like unix:///path/to/skyd.sock")
    return host


def resolve(flag: str | None) -> tuple[str, str]:
    """(socket path, where it came from). An empty --host is a mistake (an unset variable
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
    mine = user_socket()
    if os.path.exists(mine) or not os.path.exists(SYSTEM_SOCKET):
        return mine, "the per-user default"
    return SYSTEM_SOCKET, "the system default"


def parse(address: str) -> str:
    if address.startswith("unix://"):
        path = address[len("unix://"):]
    elif address.startswith("/") or address.startswith("."):
        path = address
    elif "://" in address:
        scheme = address.split("://", 1)[0]
        raise EndpointError(f"{scheme}:// addresses are not supported yet; use unix:///path/to/skyd.sock")
    else:
        raise EndpointError(f"cannot understand server address {address!r}; "
                            "use unix:///path/to/skyd.sock")
    if not path:
        raise EndpointError("empty socket path in server address")
    return os.path.expanduser(path)
