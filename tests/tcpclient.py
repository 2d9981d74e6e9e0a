"""For the remote-access tests: `skyd token` as a real subprocess, a self-signed TLS
certificate made with openssl, and the real skyctl Connection over tcp:// (its token and
TLS settings are environment variables, set here for the one connection)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

from conftest import ROOT, Daemon
from skyctl.connection import Connection
from skyctl.endpoint import parse
from skyd import protocol


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYD_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def skyd_token(d: Daemon, *args: str) -> subprocess.CompletedProcess:
    """`skyd token ...` as root against the test daemon (through its socket when it runs)."""
    return subprocess.run([sys.executable, "-m", "skyd", "token", "--state-dir", str(d.state_dir),
                           "--socket", str(d.socket), *args], capture_output=True, text=True,
                          env=_env(), timeout=60)


def new_token(d: Daemon, name: str, *args: str) -> str:
    p = skyd_token(d, "create", name, *args)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def tcp_port(d: Daemon) -> int:
    info = d.call(protocol.ApiInfo())
    assert info.tcp, "the daemon has no TCP listener"
    return int(info.tcp.rpartition(":")[2])


@contextlib.contextmanager
def client_env(token: str, ca: Path | None = None, tls: bool | None = None) -> Iterator[None]:
    """skyctl's tcp:// settings for what runs inside (SKYD_TOKEN, SKYD_TLS, SKYD_TLS_CA)."""
    want = {"SKYD_TOKEN": token, "SKYD_TLS_CA": str(ca) if ca else None,
            "SKYD_TLS": None if tls is None else ("1" if tls else "0")}
    saved = {k: os.environ.get(k) for k in want}
    try:
        for k, v in want.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def connect(d: Daemon, token: str, ca: Path | None = None, host: str = "127.0.0.1",
            tls: bool | None = None) -> Connection:
    """The real client on tcp://HOST:PORT (TLS when a CA is given or `tls`)."""
    with client_env(token, ca, tls):
        return Connection(parse(f"tcp://{host}:{tcp_port(d)}"), "test", timeout=15).connect()


def timed_refusal(d: Daemon, token: str, **kw) -> tuple[float, Exception]:
    t0 = time.monotonic()
    try:
        connect(d, token, **kw).close()
    except Exception as e:  # noqa: BLE001 - the test looks at which
        return time.monotonic() - t0, e
    raise AssertionError("the connection was accepted")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key (EC P-256, one day)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    return cert, key


def raw_tcp(port: int, host: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection((host, port), timeout=10)
    return s
