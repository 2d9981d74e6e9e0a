"""ssh:// figures (issue 14; DESIGN.md §5: `ssh://` warm ≤ `ssh HOST true` + 10 ms).

    sudo python -m profiling.bench_remote_client [--reps 10] [--upload-mib 50]
        [--files 200] [--out bench-results/remote_client.json]

A real sshd on loopback (tests/sshd.py, 127.0.0.21) is the "VM", where the test account
alice (tests/users.py) logs in with her own key; a real daemon whose socket her group may
use. Everything runs as alice, in one run, interleaved per repetition, median (min–max):
  1. `ssh HOST true`: a new SSH connection each time, and through a reused master;
  2. `skyctl status` over ssh:// cold (the master is closed first: a new SSH connection,
     as skyctl's first command of the day) and warm (the master that the previous
     command left, ControlPersist), next to `skyctl status` on the Unix socket;
  3. `skyctl --version` run on the VM through the reused master: the remote interpreter's
     start, which every ssh:// command pays for `skyctl dial-stdio`;
  4. the workdir upload (skyctl.upload.ship: pack, hash, look, send, unpack; timed in
     its process, without the interpreter's start) of a tree of FILES random files
     against `rsync -a` of the same tree over the same master (the whole command), each
     to an empty place; then both again with the tree unchanged (skyctl: nothing sent).
Needs root (it acts as alice), sshd, ssh, rsync. The machine's load average is recorded
before and after: on a shared machine it moves every figure here.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from profiling._daemon import ROOT, BenchDaemon, kill_leftovers
from profiling._report import agg, code_version, fmt_agg, machine_info, markdown

SSH_IP = 21                   # 127.0.0.21: apart from the tests' sshd hosts

# What the upload child runs, as alice: skyctl's own upload of one workdir (SKYD_HOST).
_SHIP = """
import sys, time
from skyctl.endpoint import parse
from skyctl.upload import ship
from skyd import protocol
from skyd.taskspec import Task
t0 = time.perf_counter()
op = ship(parse(sys.argv[1]), protocol.Launch(task=Task(run="true", workdir=sys.argv[2])))
print(time.perf_counter() - t0, op.task.workdir)
"""


class Alice:
    """The test account alice on her "laptop": her key, her control sockets, skyctl."""

    def __init__(self, person, host, daemon: BenchDaemon, run_dir: Path, known: Path):
        self.p, self.host, self.run_dir = person, host, run_dir
        self.ssh = ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={known}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
                    "-i", f"{person.home}/.ssh/id_ed25519"]
        self.url = f"ssh://{person.name}@{host.ip}:{host.port}{daemon.socket}"
        self.env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": person.home, "NO_COLOR": "1",
            "USER": person.name, "PYTHONPATH": person.pythonpath,
            "XDG_RUNTIME_DIR": str(run_dir), "XDG_CONFIG_HOME": str(run_dir / "config"),
            "SKYD_SSH_COMMAND": shlex.join(self.ssh),
            "SKYD_REMOTE_SKYCTL": f"env PYTHONPATH={person.pythonpath} {person.python} -m skyctl",
        }
        self.unix = f"unix://{daemon.socket}"

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess:
        p = subprocess.run(argv, env={**self.env, **env}, preexec_fn=self.p._become,
                           capture_output=True, text=True, timeout=120, cwd=self.run_dir)
        if p.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} -> {p.returncode}: {p.stderr[-800:]}")
        return p

    def timed(self, argv: list[str], **env: str) -> float:
        t0 = time.perf_counter()
        self.run(argv, **env)
        return time.perf_counter() - t0

    def skyctl(self, *args: str) -> list[str]:
        return [self.p.python, "-m", "skyctl", *args]

    def master_opts(self) -> list[str]:
        """The options skyctl's ssh uses (skyctl.sshcmd.ssh_argv): the same master."""
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.run_dir}/skyctl/%C",
                "-o", "ControlPersist=10m", "-o", "BatchMode=yes", "-p", str(self.host.port),
                "-l", self.p.name]

    def ssh_true(self, reused: bool) -> list[str]:
        if reused:
            return [*self.ssh, *self.master_opts(), self.host.ip, "true"]
        return [*self.ssh, "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o",
                "BatchMode=yes", "-p", str(self.host.port), "-l", self.p.name, self.host.ip,
                "true"]

    def close_master(self) -> None:
        subprocess.run([*self.ssh, *self.master_opts(), "-O", "exit", self.host.ip],
                       env=self.env, preexec_fn=self.p._become, capture_output=True,
                       timeout=30)
        # ssh -O exit returns before the master's socket is gone: wait for it.
        d = self.run_dir / "skyctl"
        deadline = time.monotonic() + 5
        while d.exists() and any(p.is_socket() for p in d.iterdir()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)

    def remote(self, script: str) -> None:
        self.run([*self.ssh, *self.master_opts(), self.host.ip, script])

    def ship(self, tree: Path) -> float:
        """Seconds skyctl's upload of `tree` took (timed inside: no interpreter start)."""
        out = self.run([self.p.python, "-c", _SHIP, self.url, str(tree)]).stdout.split()
        return float(out[0])


def _make_tree(root: Path, files: int, total: int, person) -> None:
    """`files` files of random bytes (incompressible), `total` bytes in all, in 10 folders."""
    size = total // files
    for i in range(files):
        d = root / f"d{i % 10:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.bin").write_bytes(os.urandom(size))
    subprocess.run(["chown", "-R", f"{person.uid}:{person.gid}", str(root)], check=True)


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _own_key(person) -> None:
    r = person.sh("set -e; umask 077; mkdir -p ~/.ssh; "
                  "[ -f ~/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; "
                  "k=$(cat ~/.ssh/id_ed25519.pub); touch ~/.ssh/authorized_keys; "
                  "grep -qxF \"$k\" ~/.ssh/authorized_keys || echo \"$k\" >> ~/.ssh/authorized_keys")
    if r.returncode != 0:
        raise RuntimeError(f"alice's key: {r.stderr}")


def run(reps: int, upload_mib: int, files: int) -> dict:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark acts as the test account alice")
    from tests import users
    from tests.sshd import SshHosts
    client, people = users.make_people()
    alice_p = people[0]
    _own_key(alice_p)
    root = Path(tempfile.mkdtemp(prefix="skyd-brc-", dir="/tmp"))
    os.chmod(root, 0o755)
    hosts = SshHosts(root / "ssh", count=1, first_ip=SSH_IP, logins=(alice_p.name,))
    d = BenchDaemon(root, "d", ["--socket-group", users.GROUP])
    f: dict[str, list] = {k: [] for k in (
        "ssh_true_new_ms", "ssh_true_reused_ms", "status_ssh_cold_ms", "status_ssh_warm_ms",
        "status_unix_ms", "remote_skyctl_version_ms", "upload_s", "rsync_s",
        "upload_again_s", "rsync_again_s")}
    load = {"before": _loadavg()}
    try:
        hosts.__enter__()
        host = hosts[0]
        known = root / "known_hosts"
        known.write_text(f"[{host.ip}]:{host.port} {host.host_key_pub}\n")
        known.chmod(0o644)
        d.start()
        run_dir = root / "alice"
        run_dir.mkdir(mode=0o700)
        os.chown(run_dir, alice_p.uid, alice_p.gid)
        alice = Alice(alice_p, host, d, run_dir, known)
        status = alice.skyctl("status")
        ssh_env, unix_env = {"SKYD_HOST": alice.url}, {"SKYD_HOST": alice.unix}
        # Warm every path once (bytecode caches, the first login's start-up files).
        alice.run(status, **ssh_env)
        alice.run(status, **unix_env)
        alice.run(alice.ssh_true(False))
        version = [*alice.ssh, *alice.master_opts(), host.ip,
                   alice.env["SKYD_REMOTE_SKYCTL"] + " --version"]
        for _ in range(reps):
            f["ssh_true_new_ms"].append(alice.timed(alice.ssh_true(False)) * 1000)
            alice.close_master()
            f["status_ssh_cold_ms"].append(alice.timed(status, **ssh_env) * 1000)
            f["status_ssh_warm_ms"].append(alice.timed(status, **ssh_env) * 1000)
            f["ssh_true_reused_ms"].append(alice.timed(alice.ssh_true(True)) * 1000)
            f["remote_skyctl_version_ms"].append(alice.timed(version) * 1000)
            f["status_unix_ms"].append(alice.timed(status, **unix_env) * 1000)

        tree = run_dir / "tree"
        total = upload_mib << 20
        _make_tree(tree, files, total, alice_p)
        rsync_to = f"{alice_p.name}@{host.ip}:bench-rsync/"
        rsync = ["rsync", "-a", "-e", shlex.join([*alice.ssh, *alice.master_opts()]),
                 f"{tree}/", rsync_to]
        alice.run(status, **ssh_env)                       # the master is up
        for _ in range(max(2, reps // 3)):
            alice.remote("rm -rf ~/.skyd/uploads ~/bench-rsync")
            f["upload_s"].append(alice.ship(tree))
            f["rsync_s"].append(alice.timed(rsync))
            f["upload_again_s"].append(alice.ship(tree))
            f["rsync_again_s"].append(alice.timed(rsync))
        alice.remote("rm -rf ~/.skyd/uploads ~/bench-rsync")
        alice.close_master()
    finally:
        load["after"] = _loadavg()
        d.stop()
        kill_leftovers(root, d.sessions)
        hosts.__exit__(None, None, None)
        client.close()
        shutil.rmtree(root, ignore_errors=True)
    figures = {k: agg(v) for k, v in f.items()}
    mib = total / (1 << 20)
    for name in ("upload", "rsync"):
        figures[f"{name}_mib_s"] = agg([mib / s for s in f[f"{name}_s"]])
    figures["warm_over_ssh_true_new_ms"] = agg(
        [w - t for w, t in zip(f["status_ssh_warm_ms"], f["ssh_true_new_ms"])])
    figures["warm_over_ssh_true_reused_ms"] = agg(
        [w - t for w, t in zip(f["status_ssh_warm_ms"], f["ssh_true_reused_ms"])])
    figures["upload_over_rsync"] = agg([u / r for u, r in zip(f["upload_s"], f["rsync_s"])])
    return {"machine": machine_info(), "code": code_version(), "reps": reps, "files": files,
            "upload_mib": mib, "loadavg": load, "figures": figures}


def table(res: dict) -> str:
    f = res["figures"]
    ms: Callable[[str], str] = lambda k: fmt_agg(f[k], digits=0)       # noqa: E731
    rows = [
        ["`ssh HOST true`, a new SSH connection", ms("ssh_true_new_ms")],
        ["`ssh HOST true`, the master reused", ms("ssh_true_reused_ms")],
        ["`skyctl status` over ssh://, cold (new SSH connection)", ms("status_ssh_cold_ms")],
        ["`skyctl status` over ssh://, warm (master reused)", ms("status_ssh_warm_ms")],
        ["`skyctl status` on the Unix socket", ms("status_unix_ms")],
        ["… of which the VM's `skyctl --version` through the master",
         ms("remote_skyctl_version_ms")],
        ["warm − `ssh HOST true` (new connection)", ms("warm_over_ssh_true_new_ms")],
        ["warm − `ssh HOST true` (master reused)", ms("warm_over_ssh_true_reused_ms")],
    ]
    up = [
        [f"workdir upload, {res['files']} files / {res['upload_mib']:.0f} MiB, s",
         fmt_agg(f["upload_s"], digits=2), fmt_agg(f["upload_mib_s"], digits=0)],
        ["`rsync -a` of the same tree, same master, s", fmt_agg(f["rsync_s"], digits=2),
         fmt_agg(f["rsync_mib_s"], digits=0)],
        ["upload / rsync (time)", fmt_agg(f["upload_over_rsync"], digits=2), ""],
        ["the same tree again: skyctl (nothing sent), s", fmt_agg(f["upload_again_s"], digits=2),
         ""],
        ["the same tree again: rsync (checks, sends nothing), s",
         fmt_agg(f["rsync_again_s"], digits=2), ""],
    ]
    la = res["loadavg"]
    return (markdown(["figure (ms)", "median (min–max)"], rows) + "\n\n"
            + markdown(["figure", "time", "MiB/s"], up)
            + f"\n\nload average before {la['before']}, after {la['after']}; "
              f"{res['machine']['nproc']} CPUs; {res['reps']} repetitions")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m profiling.bench_remote_client",
                                description=(__doc__ or "").splitlines()[0])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--upload-mib", type=int, default=50)
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--out", type=Path, default=ROOT / "bench-results" / "remote_client.json")
    a = p.parse_args(argv)
    res = run(a.reps, a.upload_mib, a.files)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"\nraw results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
