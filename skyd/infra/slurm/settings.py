"""The daemon's `slurm:` settings: where Slurm's commands are and how they find the
cluster, and what every allocation asks for unless the task says otherwise.

```yaml
slurm:
  partition: gpu          # default partition ("" or absent: Slurm's default)
  account: ml-team        # --account of every allocation (each user must be allowed it)
  qos: normal
  time_limit: "24:00:00"  # --time ("" : the partition's default)
  slurm_conf: /etc/slurm/slurm.conf   # default: the daemon's own $SLURM_CONF, else Slurm's
  bin_dir: /opt/slurm/bin             # default: sbatch, srun, ... on the PATH
  files_dir: .skyd/slurm  # each user's cluster files, relative to their home (which the
                          # compute nodes must share with the host Slurm's commands run on)
  login: login1.example.org:22   # Slurm's commands run on this login node, over ssh
                          # ("" or absent: on the daemon's own host, itself a login node)
  identity_file: ~/.ssh/slurm    # optional: the key each user logs in with (in their home)
  watch_user: skyd        # optional: the login the daemon's own squeue uses (its own ssh
  watch_identity_file: /etc/skyd/slurm-key  # setup, or this key); absent: each owner's
```
With `login`, each user reaches the login node as themselves (their login name, their
~/.ssh or `identity_file`, as on a per-user node pool), so Slurm sees the calling user;
their cluster files live in their home on the Slurm side.
The section turns the infra on: without it `resources.infra: slurm` is refused.
Every value that reaches a command line is checked here, with an error naming it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Any

import msgspec

from skyd.infra.nodepools import HOST_RE, LOGIN_RE
from skyd.infra.ssh.connection import split_host_port
from skyd.privilege import STANDARD_PATH

# A partition, account or QOS name: what Slurm accepts, never starting with `-`.
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
# Slurm's time formats: MIN, MIN:SEC, H:MIN:SEC, D-H, D-H:MIN, D-H:MIN:SEC, or UNLIMITED.
TIME_RE = re.compile(r"(?:\d+-)?\d+(?::\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)
COMMANDS = ("sbatch", "srun", "squeue", "scancel", "scontrol", "sinfo")


class SettingsError(ValueError):
    pass


class SlurmSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    partition: str = ""
    account: str = ""
    qos: str = ""
    time_limit: str = ""
    slurm_conf: str = ""
    bin_dir: str = ""
    files_dir: str = ".skyd/slurm"
    command_timeout: float = 30.0     # one Slurm command never takes longer
    watch_interval: float = 5.0       # the daemon's squeue: this often while things change,
    watch_max_interval: float = 60.0  # backing off to this while nothing does
    login: str = ""                   # HOST[:PORT] of a login node reached over ssh
    identity_file: str = ""           # each user's key for it ("~/": in their own home)
    watch_user: str = ""              # the daemon's own login there, for its squeue
    watch_identity_file: str = ""     # ... and its key (absent: the daemon's ~/.ssh)

    @property
    def login_host(self) -> tuple[str, int]:
        """(host, port) of the login node (("", 22) when Slurm's commands run here)."""
        host, port = split_host_port(self.login)
        return host, port or 22

    def command(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with what Slurm's commands need to find the cluster."""
        env = dict(base)
        if self.slurm_conf:
            env["SLURM_CONF"] = self.slurm_conf
        if self.bin_dir:
            env["PATH"] = self.bin_dir + os.pathsep + env.get("PATH", STANDARD_PATH)
        return env

    def partition_of(self, infra: str) -> str:
        """`slurm/PART` -> PART; `slurm` -> the default partition ("" : Slurm's)."""
        return infra.partition("/")[2] or self.partition


def _check(field: str, value: str) -> None:
    if field in ("partition", "account", "qos") and value and not NAME_RE.fullmatch(value):
        raise SettingsError(f"slurm.{field}: {value!r} is not a Slurm name (letters, digits, "
                            "`_`, `.`, `+`, `-`; not starting with `-`)")
    if field == "time_limit" and value and not TIME_RE.fullmatch(value):
        raise SettingsError(f"slurm.time_limit: {value!r} is not a Slurm time "
                            "(MINUTES, HH:MM:SS, D-HH:MM:SS or UNLIMITED)")
    if field in ("slurm_conf", "bin_dir") and value and not os.path.isabs(value):
        raise SettingsError(f"slurm.{field}: {value!r} must be an absolute path")
    if field == "files_dir" and (not value or os.path.isabs(value) or ".." in value.split("/")):
        raise SettingsError(f"slurm.files_dir: {value!r} must be a path relative to each "
                            "user's home, without `..`")
    if field == "login" and value:
        host, port = _host_port(value)
        if not _host_ok(host, value.startswith("[")) or not (port is None or 0 < port < 65536):
            raise SettingsError(f"slurm.login: {value!r} is not HOST, HOST:PORT or [V6]:PORT")
    if field == "watch_user" and value and not LOGIN_RE.fullmatch(value):
        raise SettingsError(f"slurm.watch_user: {value!r} is not a login name")
    if field in ("identity_file", "watch_identity_file") and value and \
            not value.startswith(("/", "~/")):
        raise SettingsError(f"slurm.{field}: {value!r} must be an absolute path or start "
                            "with ~/")
    if any(c < " " for c in value):
        raise SettingsError(f"slurm.{field}: must not hold control characters")


def _host_ok(host: str, bracketed: bool) -> bool:
    if not bracketed:
        return bool(HOST_RE.fullmatch(host))
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _host_port(value: str) -> tuple[str, int | None]:
    try:
        return split_host_port(value)
    except ValueError:
        return "", None


def parse(raw: Any, env: dict[str, str] | None = None) -> SlurmSettings:
    """The `slurm:` section (a mapping; a YAML string from the environment), checked.
    `slurm_conf` defaults to the daemon's own $SLURM_CONF."""
    if isinstance(raw, str):
        import yaml
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise SettingsError(f"slurm: not valid YAML: {e}") from None
    if raw is None or raw is True:
        raw = {}
    if not isinstance(raw, dict):
        raise SettingsError("slurm: expected a mapping of settings "
                            f"({', '.join(SlurmSettings.__struct_fields__)})")
    unknown = sorted(set(raw) - set(SlurmSettings.__struct_fields__))
    if unknown:
        raise SettingsError(f"slurm: unknown setting {unknown[0]!r} "
                            f"(known: {', '.join(SlurmSettings.__struct_fields__)})")
    raw = {k: ("" if v is None else v) for k, v in raw.items()}
    try:
        settings = msgspec.convert(raw, SlurmSettings, strict=False)
    except msgspec.ValidationError as e:
        raise SettingsError(f"slurm: {str(e).replace(' - at `$.', ' at `')}") from None
    for field in ("partition", "account", "qos", "time_limit", "slurm_conf", "bin_dir",
                  "files_dir", "login", "identity_file", "watch_user", "watch_identity_file"):
        _check(field, getattr(settings, field))
    if not settings.login and (settings.identity_file or settings.watch_user
                               or settings.watch_identity_file):
        raise SettingsError("slurm: identity_file, watch_user and watch_identity_file are "
                            "for a login node reached over ssh: set slurm.login too")
    if not 0 < settings.watch_interval <= settings.watch_max_interval:
        raise SettingsError("slurm.watch_interval: must be positive and at most "
                            "watch_max_interval")
    if settings.command_timeout <= 0:
        raise SettingsError("slurm.command_timeout: must be positive")
    conf = (env if env is not None else os.environ).get("SLURM_CONF", "")
    if not settings.slurm_conf and conf and os.path.isabs(conf):
        settings = msgspec.structs.replace(settings, slurm_conf=conf)
    return settings
