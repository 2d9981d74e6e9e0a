"""Real Unix users for isolation tests: created by the suite (CI runs as root), each
running the real skyctl as a subprocess with their own uid, gid and groups.

`people()` returns two ordinary accounts, alice and bob (`skyd-alice`, `skyd-bob`), both
members of the group `skyd-users` that the test daemon's socket is opened to. They are
created once per machine and left in place (useradd is slow and idempotent reuse is safe).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

GROUP = "skyd-users"
NAMES = ("skyd-alice", "skyd-bob")


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def ensure_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        _run("groupadd", "--system", name)
        return grp.getgrnam(name).gr_gid


def ensure_user(name: str, group: str = GROUP) -> pwd.struct_passwd:
    ensure_group(group)
    try:
        pwd.getpwnam(name)
    except KeyError:
        _run("useradd", "--create-home", "--shell", "/bin/bash", "--user-group",
             "--groups", group, name)
    if group not in [g.gr_name for g in grp.getgrall() if name in g.gr_mem]:
        _run("usermod", "-a", "-G", group, name)
    return pwd.getpwnam(name)


def _client_env(pythonpath: str, home: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SKYD_HOST", None)
    env["NO_COLOR"] = "1"
    env["HOME"] = home
    env["PYTHONPATH"] = pythonpath
    return env


@dataclass
class Person:
    """An account that runs the real skyctl against a test daemon."""
    name: str
    uid: int
    gid: int
    home: str
    python: str
    pythonpath: str

    def _become(self) -> None:
        os.initgroups(self.name, self.gid)
        os.setgid(self.gid)
        os.setuid(self.uid)

    def cmd(self, d, *args: str) -> tuple[list[str], dict[str, str]]:
        env = _client_env(self.pythonpath, self.home)
        env["SKYD_HOST"] = d.host
        return [self.python, "-m", "skyctl", *args], env

    def skyctl(self, d, *args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        cmd, env = self.cmd(d, *args)
        return subprocess.run(cmd, env=env, preexec_fn=self._become, capture_output=True,
                              text=True, timeout=timeout, **kw)

    def popen(self, d, *args: str, **kw) -> subprocess.Popen:
        cmd, env = self.cmd(d, *args)
        return subprocess.Popen(cmd, env=env, preexec_fn=self._become, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)

    def sh(self, script: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
        """A shell command as this person (their own attack on the daemon's files)."""
        return subprocess.run(["bash", "-c", script], preexec_fn=self._become, text=True,
                              capture_output=True, timeout=timeout, cwd="/",
                              env={"HOME": self.home, "PATH": "/usr/bin:/bin", "USER": self.name},
                              **kw)

    def python_call(self, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Python code as this person, with the daemon's package importable."""
        return subprocess.run([self.python, "-c", code], preexec_fn=self._become, text=True,
                              capture_output=True, timeout=timeout,
                              env=_client_env(self.pythonpath, self.home))


def _probe(python: str, pythonpath: str, pw: pwd.struct_passwd) -> str | None:
    def become() -> None:
        os.initgroups(pw.pw_name, pw.pw_gid)
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    try:
        p = subprocess.run([python, "-c", "import skyctl.cli, skyctl.taskfile, yaml, skyd.protocol"],
                           env=_client_env(pythonpath, pw.pw_dir), preexec_fn=become,
                           capture_output=True, text=True, timeout=30)
    except OSError as e:
        return f"{python}: {e}"
    return None if p.returncode == 0 else f"{python}: {p.stderr.strip()[-300:]}"


class ClientPython:
    """An interpreter every test account can run skyctl with: the test interpreter if
    they may reach it, else the system interpreter of the same version with copies of
    skyctl's dependencies (msgspec, yaml) beside the source tree."""

    def __init__(self) -> None:
        self._deps: Path | None = None
        self.python, self.pythonpath = sys.executable, str(ROOT)

    def find(self, pw: pwd.struct_passwd) -> str | None:
        base = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        if _probe(sys.executable, base, pw) is None:
            self.python, self.pythonpath = sys.executable, base
            return None
        import msgspec
        import yaml
        v = sys.version_info
        system = shutil.which(f"python{v.major}.{v.minor}", path="/usr/local/bin:/usr/bin:/bin")
        if system is None:
            return f"no system python{v.major}.{v.minor} the test accounts may run"
        self._deps = Path(tempfile.mkdtemp(prefix="skyd-client-", dir="/tmp"))
        for mod in (msgspec, yaml):
            src = Path(mod.__file__).parent
            shutil.copytree(src, self._deps / src.name)
        if os.environ.get("COVERAGE_PROCESS_START"):
            self._measure_too()
        for dirpath, dirnames, filenames in os.walk(self._deps):
            os.chmod(dirpath, 0o755)
            for n in filenames:
                os.chmod(os.path.join(dirpath, n), 0o644)
        path = str(ROOT) + os.pathsep + str(self._deps)
        why = _probe(system, path, pw)
        if why is not None:
            return why
        self.python, self.pythonpath = system, path
        return None

    def _measure_too(self) -> None:
        """Under coverage (.ci/run), the system interpreter measures the skyctl it runs as
        the test's does (coverage's .pth hook): coverage beside msgspec, and a
        sitecustomize, which Python imports from PYTHONPATH at start."""
        import coverage
        assert self._deps is not None
        src = Path(coverage.__file__).parent
        shutil.copytree(src, self._deps / src.name)
        (self._deps / "sitecustomize.py").write_text(
            "import coverage\ncoverage.process_startup()   # tests/users.py: measured too\n")

    def close(self) -> None:
        if self._deps is not None:
            shutil.rmtree(self._deps, ignore_errors=True)


def make_people() -> tuple[ClientPython, list[Person]]:
    """Create (or reuse) alice and bob; raise RuntimeError when they cannot run skyctl."""
    accounts = [ensure_user(n) for n in NAMES]
    client = ClientPython()
    why = client.find(accounts[0])
    if why is not None:
        client.close()
        raise RuntimeError(why)
    return client, [Person(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, client.python,
                           client.pythonpath) for pw in accounts]
