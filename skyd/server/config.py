"""Daemon settings: flags, then environment, then the config file, then defaults."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from skyd.infra.slurm import SettingsError, SlurmSettings, parse_settings
from skyd.protocol import DEFAULT_MAX_FRAME
from skyd.server.listeners import (ListenError, format_address, parse_tcp_address,
                                   require_tls_off_loopback)

SYSTEM_SOCKET = Path("/run/skyd/skyd.sock")
WORK_CPU = ("idle", "background", "nice")


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "skyd"


class ConfigError(ValueError):
    pass


@dataclass
class Config:
    state_dir: Path = dataclasses.field(default_factory=default_state_dir)
    socket: Path | None = None            # default: <state_dir>/skyd.sock
    socket_group: str | None = None       # when set, the socket is 0660 for this group
    admin_group: str | None = None        # members may see and control every request
    max_frame: int = DEFAULT_MAX_FRAME
    long_slots: int | None = None         # default: sized from the hardware
    short_slots: int | None = None
    calibration: Path | None = None       # default: <state_dir>/calibration.json
    retention_hours: float = 24.0         # finished requests and logs kept this long; <0: forever
    drain_timeout: float = 10.0           # on SIGTERM, wait this long for running requests
    kill_grace: float = 3.0               # SIGTERM -> SIGKILL when cancelling
    spares: int = 2                       # idle pre-forked workers
    # How work (workers, setups, local jobs) yields the CPU to the daemon's loop: "idle",
    # an idle cpu cgroup beside the daemon's where the host allows it (else nice);
    # "background", one idle against everything on the host; "nice" alone
    # (skyd.sizing.cpugroups).
    work_cpu: str = "idle"
    skip_resources_check: bool = False
    node_pools: Path | None = None        # ssh node pools (YAML); default <state_dir>/ssh_node_pools.yaml
    ssh_known_hosts: Path | None = None   # default: each user's ~/.ssh/known_hosts
    jobs_parallelism: int | None = None   # managed-job launches/teardowns at once (default: half the long slots)
    jobs_recover_after: float = 30.0      # seconds a managed job's node may not answer before it is relaunched
    # Fair shares and limits (reported by `skyctl api info`). 0: no limit, where allowed.
    # Root and the daemon's own user operate the host: no per-user connection or queue caps.
    handshake_timeout: float = 10.0       # a connection must say hello within this (<=0: forever)
    connections_per_user: int = 64        # open connections one uid may hold (0: no cap)
    inflight_bytes: int = 256 * 1024 * 1024   # all connections' unfinished large frames together
    handshake_max_frame: int = 64 * 1024  # largest frame before the handshake (a hello is tiny)
    user_long_slots: int | None = None    # long slots one user may hold (default: half the slots; 0: no cap)
    user_pending: int = 100               # long requests one user may have waiting (0: no cap)
    long_timeout: float = 0.0             # default time limit of a long request, seconds (0: none)
    request_log_bytes: int = 64 * 1024 * 1024  # bytes kept per request log (0: no cap)
    job_log_bytes: int = 1024 * 1024 * 1024    # bytes kept of a job's output per node (0: no cap)
    max_gpus_per_user: int = 0            # GPUs one user may hold at once (0: no cap)
    max_clusters_per_user: int = 0        # clusters one user may have at once (0: no cap)
    watch_buffer: int = 1000              # events a watcher may fall behind before it is dropped
    log_level: str = "INFO"
    # HOST:PORT of the HTTP side (/metrics, /healthz, /readyz, the dashboard); None: off.
    # On loopback its users are told apart by their socket's owner; elsewhere it needs TLS
    # (tls_cert, tls_key) and a bearer token on every request (skyd.server.http.gate).
    http: str | None = None
    # TCP beside the Unix socket (skyd.server.remote): HOST:PORT; None: off. A bearer token
    # is required on every connection (skyd token); TLS (tls_cert, tls_key) off loopback.
    tcp: str | None = None
    tls_cert: Path | None = None          # PEM certificate chain for TCP
    tls_key: Path | None = None           # its PEM private key
    tokens_file: Path | None = None       # default: <state_dir>/tokens.json
    tcp_handshake_timeout: float = 5.0    # TLS and a hello with a valid token within this
    tcp_auth_failures: int = 10           # failed logins per address and minute (0: no cap)
    tcp_preauth_per_address: int = 64     # connections not yet authenticated per address (0: no cap)
    # The `slurm` infra (skyd.infra.slurm.settings): a `slurm:` section turns it on.
    slurm: SlurmSettings | None = None

    @property
    def socket_path(self) -> Path:
        return self.socket or self.state_dir / "skyd.sock"

    @property
    def calibration_path(self) -> Path:
        return self.calibration or self.state_dir / "calibration.json"

    @property
    def node_pools_path(self) -> Path:
        return self.node_pools or self.state_dir / "ssh_node_pools.yaml"

    @property
    def http_address(self) -> tuple[str, int] | None:
        return None if self.http is None else parse_http_address(self.http)

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        return None if self.tcp is None else parse_tcp_address(self.tcp)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def tokens_path(self) -> Path:
        return self.tokens_file or self.state_dir / "tokens.json"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "skyd.db"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs" / "requests"

    @property
    def managed_logs_dir(self) -> Path:
        return self.state_dir / "logs" / "managed_jobs"


ENV = {f.name: "SKYD_" + f.name.upper() for f in fields(Config)}
ZERO_MEANS_NO_CAP = {"connections_per_user", "inflight_bytes", "user_long_slots", "user_pending",
                     "request_log_bytes", "max_gpus_per_user", "max_clusters_per_user",
                     "tcp_auth_failures", "tcp_preauth_per_address"}


def parse_http_address(text: str) -> tuple[str, int]:
    """(host, port) of `--http`: HOST:PORT, [IPv6]:PORT or PORT alone (on 127.0.0.1)."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text.strip()
    host = host.strip("[]") or "127.0.0.1"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise ConfigError(f"http: {text!r} is not HOST:PORT (a port from 0 to 65535), "
                          "e.g. 127.0.0.1:9090") from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"http: {host!r} is not an IP address; give the address to bind, "
                          "e.g. 127.0.0.1:9090 (this host) or 0.0.0.0:9090 with TLS") from None
    return host, port


def check_http(config: Config) -> None:
    """Off loopback the HTTP side takes tokens (skyd.server.http.gate), so it needs TLS:
    refuse at start, like TCP, rather than let tokens cross the network in clear text."""
    if config.http is None:
        return
    host, port = parse_http_address(config.http)
    if not config.tls and not ipaddress.ip_address(host).is_loopback:
        raise ConfigError(
            f"http: refusing to serve HTTP on {format_address(host, port)} without TLS: {host} "
            "is not a loopback address, and bearer tokens would cross the network in clear "
            "text. Set tls_cert and tls_key (--tls-cert, --tls-key), or serve on 127.0.0.1 "
            f"and forward it: ssh -L {port}:127.0.0.1:{port} THIS_HOST")


def _coerce(name: str, raw: Any) -> Any:
    kind = {f.name: f.type for f in fields(Config)}[name]
    if name == "slurm":             # a section: `slurm:` alone turns it on with defaults
        try:
            return parse_settings(raw)
        except SettingsError as e:
            raise ConfigError(str(e)) from None
    try:
        if raw is None:
            return None
        if name == "work_cpu" and str(raw) not in WORK_CPU:
            raise ValueError(f"one of {', '.join(WORK_CPU)}")
        if "Path" in kind:
            return Path(str(raw)).expanduser()
        if kind.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if kind.startswith("int"):
            value = int(raw)
            if value < (0 if name in ZERO_MEANS_NO_CAP else 1):
                raise ValueError("must be at least " +
                                 ("0 (no cap)" if name in ZERO_MEANS_NO_CAP else "1"))
            return value
        if kind.startswith("float"):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: invalid value {raw!r} ({e})") from None


def load(flags: Mapping[str, Any], env: Mapping[str, str] | None = None,
         config_file: str | os.PathLike | None = None) -> Config:
    """Merge the sources; `flags` holds only what was given on the command line."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get("SKYD_CONFIG")
    state_dir = flags.get("state_dir") or env.get("SKYD_STATE_DIR")
    if path is None:
        candidate = Path(state_dir).expanduser() if state_dir else default_state_dir()
        if (candidate / "config.yaml").exists():
            path = candidate / "config.yaml"
    if path is not None:
        values.update(_read_file(Path(path)))
    for name, var in ENV.items():
        if var in env and env[var] != "":
            values[name] = env[var]
    values.update({k: v for k, v in flags.items() if v is not None and k in ENV})
    config = Config(**{k: _coerce(k, v) for k, v in values.items()})
    check_tcp(config)
    check_http(config)                     # a bad address, or clear text off loopback
    return config


def check_tcp(config: Config) -> None:
    """A bad TCP address, half a TLS setting, or clear text off loopback stop the start."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("tls: give both tls_cert and tls_key (a certificate and its key)")
    if config.tcp is None:
        return
    try:
        host, port = parse_tcp_address(config.tcp)
        require_tls_off_loopback(host, port, config.tls)
    except ListenError as e:
        raise ConfigError(str(e)) from None


def _read_file(path: Path) -> dict[str, Any]:
    import yaml
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of settings")
    unknown = sorted(set(data) - set(ENV))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r} "
                          f"(known: {', '.join(sorted(ENV))})")
    return data
