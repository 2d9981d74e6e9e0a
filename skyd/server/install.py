"""`skyd install`: skyd as a service on a fresh Debian or Ubuntu VM, from a source tree.

    sudo python3 -m skyd install        # in a checkout; python3 >= 3.11 with its venv module

What it does, each step safe to run again: a virtualenv of its own under /opt/skyd (no
pip into the system Python: Debian and Ubuntu refuse that), skyd and skyctl linked into
/usr/local/bin, the units and the sysusers file, /etc/skyd/config.yaml (kept if present),
the groups, a first admin token, then `systemctl enable --now`. `--prefix DIR` writes
everything under DIR instead and changes nothing else on the system (for tests and
packaging: no groups, no systemctl); `--no-enable` installs but starts nothing.

Standard library only, up to the virtualenv: on a fresh VM nothing else is installed yet.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2]       # the tree holding skyd/ and systemd/
VENV = Path("/opt/skyd")
CONFIG = Path("/etc/skyd/config.yaml")
STATE = Path("/var/lib/skyd")
SOCKET = Path("/run/skyd/skyd.sock")
UNITS = Path("/etc/systemd/system")
SYSUSERS = Path("/etc/sysusers.d/skyd.conf")
BIN = Path("/usr/local/bin")
DOC = VENV / "share/doc/skyd/README.md"           # the units' Documentation=
GROUPS = ("skyd", "skyd-admin")
MIN_PYTHON = (3, 11)

CONFIG_TEXT = f"""\
# skyd's settings (`skyd serve --help` lists them all). `systemctl reload skyd` applies
# admins, tokens, node pools and limits without a restart.
state_dir: {STATE}
socket: {SOCKET}
socket_group: skyd            # members may use skyctl on this VM
admin_group: skyd-admin       # members see and control everyone's work, manage tokens
# TCP for CI and laptops: a token on every connection (skyd token create); TLS required
# off loopback. Also add the port to skyd.socket (systemctl edit skyd.socket).
# tcp: 0.0.0.0:46590
# tls_cert: /etc/skyd/tls/cert.pem
# tls_key: /etc/skyd/tls/key.pem
"""


class InstallError(Exception):
    pass


def add_parser(sub) -> None:
    p = sub.add_parser("install", help="install skyd as a team service on this VM (root)",
                       description="Install skyd as a systemd service on a Debian or Ubuntu VM: "
                                   f"a virtualenv in {VENV}, the units, {CONFIG}, the groups "
                                   "skyd and skyd-admin, and a first admin token. Run it from "
                                   "a source tree, as root.")
    p.add_argument("--prefix", metavar="DIR",
                   help="write everything under DIR and change nothing else (no groups, no "
                        "systemctl): for tests and packaging")
    p.add_argument("--no-enable", action="store_true",
                   help="install, but do not enable or start the service")
    p.add_argument("--admin", metavar="USER",
                   help="the first admin: added to the groups, given a token "
                        "(default: the user who ran sudo, else root)")
    p.add_argument("--python", metavar="PATH", default=sys.executable,
                   help=f"the Python (>= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}) to build the "
                        "virtualenv with (default: this one)")
    p.add_argument("--offline", action="store_true",
                   help="install from this machine only: the virtualenv sees the system's "
                        "packages and pip downloads nothing")


def run(args: argparse.Namespace) -> int:
    try:
        Installer(args).install()
    except InstallError as e:
        print(f"skyd install: error: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"skyd install: error: {' '.join(map(str, e.cmd))} failed (exit {e.returncode})"
              + (f":\n{_tail(e.stderr)}" if e.stderr else ""), file=sys.stderr)
        return 1
    return 0


class Installer:
    def __init__(self, args: argparse.Namespace):
        self.root = Path(args.prefix).resolve() if args.prefix else Path("/")
        self.staged = args.prefix is not None
        self.enable = not (args.no_enable or self.staged)
        self.python = args.python
        self.offline = args.offline
        self.admin = args.admin or os.environ.get("SUDO_USER") or "root"

    def at(self, path: Path) -> Path:
        """Where a system path is written: itself, or under --prefix."""
        return self.root / path.relative_to("/")

    def install(self) -> None:
        self._check()
        self._virtualenv()
        self._files()
        if not self.staged:
            self._groups()
        token = self._admin_token()
        if self.enable:
            self._start()
        self._next_steps(token)

    # ---- the steps ---------------------------------------------------------------------

    def _check(self) -> None:
        if not self.staged and os.geteuid() != 0:
            raise InstallError("run it as root: sudo python3 -m skyd install")
        if not (SOURCE / "pyproject.toml").exists() or not (SOURCE / "systemd").is_dir():
            raise InstallError(f"{SOURCE} is not a skyd source tree (no pyproject.toml and "
                               "systemd/): run it from a checkout")
        try:
            pwd.getpwnam(self.admin)
        except KeyError:
            raise InstallError(f"--admin {self.admin}: no such user") from None
        probe = subprocess.run([self.python, "-c", "import sys, venv, ensurepip; "
                                "print(*sys.version_info[:2])"], capture_output=True, text=True)
        if probe.returncode != 0:
            raise InstallError(f"{self.python} has no venv module (Debian and Ubuntu ship it "
                               "apart): apt-get install -y python3-venv, then run this again")
        version = tuple(int(v) for v in probe.stdout.split())
        if version < MIN_PYTHON:
            want = f"python{MIN_PYTHON[0]}.{MIN_PYTHON[1]}"
            raise InstallError(f"{self.python} is Python {version[0]}.{version[1]}; skyd needs "
                               f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer. On Ubuntu 22.04: "
                               f"apt-get install -y {want} {want}-venv (the deadsnakes PPA has "
                               f"it), then: sudo {want} -m skyd install")

    def _virtualenv(self) -> None:
        venv = self.at(VENV)
        _say(f"virtualenv {venv}")
        cmd = [self.python, "-m", "venv", *(["--system-site-packages"] if self.offline else []),
               str(venv)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        pip = [str(venv / "bin/python"), "-m", "pip", "install", "--quiet",
               "--disable-pip-version-check"]
        if self.offline:
            pip += ["--no-index", "--no-build-isolation"]
        _say(f"pip install {SOURCE}")
        with tempfile.TemporaryDirectory(prefix="skyd-install-") as tmp:
            # pip builds in the tree it is given: a copy leaves the checkout untouched.
            tree = Path(tmp) / "skyd"
            shutil.copytree(SOURCE, tree, ignore=shutil.ignore_patterns(
                ".git", "__pycache__", "*.egg-info", "build", "dist", "tests", ".*cache*",
                "bench-results", "mutants"))
            subprocess.run([*pip, str(tree)], check=True, capture_output=True, text=True)

    def _files(self) -> None:
        units = self.at(UNITS)
        for name in ("skyd.service", "skyd.socket"):
            _copy(SOURCE / "systemd" / name, units / name, 0o644)
        _copy(SOURCE / "systemd/skyd.sysusers.conf", self.at(SYSUSERS), 0o644)
        _copy(SOURCE / "README.md", self.at(DOC), 0o644)
        config = self.at(CONFIG)
        if config.exists():
            _say(f"{config}: kept as it is")
        else:
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(CONFIG_TEXT)
            config.chmod(0o644)
            _say(f"wrote {config}")
        state = self.at(STATE)
        state.mkdir(parents=True, exist_ok=True)
        state.chmod(0o711)
        bin_dir = self.at(BIN)
        bin_dir.mkdir(parents=True, exist_ok=True)
        for tool in ("skyd", "skyctl"):     # skyctl on the PATH: ssh:// runs `skyctl dial-stdio`
            link = bin_dir / tool
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(VENV / "bin" / tool)

    def _groups(self) -> None:
        if shutil.which("systemd-sysusers"):
            subprocess.run(["systemd-sysusers", str(SYSUSERS)], check=True, capture_output=True,
                           text=True)
        for group in GROUPS:
            try:
                grp.getgrnam(group)
            except KeyError:
                subprocess.run(["groupadd", "--system", group], check=True, capture_output=True,
                               text=True)
        if self.admin != "root":
            subprocess.run(["usermod", "-a", "-G", ",".join(GROUPS), self.admin], check=True,
                           capture_output=True, text=True)
            _say(f"{self.admin} is in the groups {', '.join(GROUPS)} (from their next login)")

    def _admin_token(self) -> str | None:
        """A first admin token for TCP (the socket and ssh:// need none)."""
        name = f"admin-{self.admin}"
        p = subprocess.run(
            [str(self.at(VENV) / "bin/skyd"), "token", "--config", str(self.at(CONFIG)),
             "--state-dir", str(self.at(STATE)), "--socket", str(self.at(SOCKET)),
             "create", name, "--user", self.admin, "--admin", "--expires", "90d"],
            capture_output=True, text=True)
        if p.returncode != 0:
            if "exists" in p.stderr:
                _say(f"token {name!r} exists already: kept (skyd token list)")
                return None
            raise InstallError(f"creating the first admin token failed:\n{_tail(p.stderr)}")
        return p.stdout.strip()

    def _start(self) -> None:
        if not Path("/run/systemd/system").is_dir():
            _say("systemd is not running here: start the daemon yourself, e.g. "
                 f"{VENV}/bin/skyd serve --config {CONFIG}")
            return
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", "--now", "skyd.socket", "skyd.service"],
                       check=True)
        _say("skyd.socket and skyd.service are enabled and running")

    def _next_steps(self, token: str | None) -> None:
        host = socket.getfqdn()
        who = self.admin if self.admin != "root" else "you"
        lines = ["", f"skyd is installed in {self.root if self.staged else VENV.parent}."]
        if token:
            lines += ["", f"The admin token of {self.admin} (for TCP; shown once, store it now):",
                      f"  {token}"]
        lines += ["", "Next steps:",
                  "  people on this VM:  sudo usermod -aG skyd NAME   (then: skyctl status)",
                  "  from a laptop:      pip install skyd  (for skyctl), then",
                  f"                      export SKYD_HOST=ssh://{who}@{host}",
                  "  CI over TCP:        sudo skyd token create ci --user SERVICE_USER, and set",
                  f"                      tcp, tls_cert and tls_key in {CONFIG}"]
        if not self.enable:
            lines += ["  start it:           systemctl daemon-reload && systemctl enable --now "
                      "skyd.socket skyd.service"]
        print("\n".join(lines))


def _copy(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)
    _say(f"wrote {dst}")


def _say(text: str) -> None:
    print(f"skyd install: {text}", file=sys.stderr)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
