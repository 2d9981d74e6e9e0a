"""A pool host reached through a jump host (`proxy_jump`, README's node pool example): a real
jump through a second loopback sshd (tests/sshd.py), asked for by a real account that logs in
as itself with its own key, as on a per-user pool."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from sshd import SshHosts, start_or_skip
from skyd import protocol


class JumpHosts(SshHosts):
    """[0] the target, [1:] jump hosts. Only the jump hosts forward connections (a jump
    needs AllowTcpForwarding there), and they log each login."""

    def _sshd_config(self, ip: str, port: int, d: Path, use_pam: bool) -> str:
        text = super()._sshd_config(ip, port, d, use_pam)
        if ip != f"127.0.0.{self.first_ip}":
            text = text.replace("AllowTcpForwarding no", "AllowTcpForwarding yes")
            text = text.replace("LogLevel ERROR", "LogLevel INFO")     # "Accepted publickey"
        return text


@pytest.fixture
def behind_a_jump(make_daemon, workdir, people):
    """(daemon, person, target, jump): a root daemon with pool `jp`, whose one host is
    reached through the jump host; `person` is the hosts' throw-away login (SshHosts makes
    it as root), made a member of the socket's group, with its own key and the jump host's
    key in its own known_hosts (ssh checks the jump's key with the user's files only)."""
    import users
    base = Path(tempfile.mkdtemp(prefix="skyd-jump-", dir="/tmp"))
    hosts = JumpHosts(base, count=2, first_ip=11)
    try:
        start_or_skip(hosts)
        target, jump = hosts[0], hosts[1]
        subprocess.run(["usermod", "-a", "-G", users.GROUP, hosts.user], check=True,
                       capture_output=True)
        pw = pwd.getpwnam(hosts.user)
        person = users.Person(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, people[0].python,
                              people[0].pythonpath)
        r = person.sh(f"set -e; umask 077; mkdir -p ~/.ssh; "
                      f"ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519; "
                      f"echo '[{jump.ip}]:{jump.port} {jump.host_key_pub}' > ~/.ssh/known_hosts")
        assert r.returncode == 0, r.stderr
        with open(base / "authorized_keys", "a") as f:      # both hosts take it for this login
            f.write(Path(pw.pw_dir, ".ssh", "id_ed25519.pub").read_text())
        os.chmod(workdir, 0o755)
        pools = workdir / "pools.yaml"
        pools.write_text(f"jp:\n  hosts:\n    - ip: {target.ip}\n      port: {target.port}\n"
                         f"      proxy_jump: {jump.ip}:{jump.port}\n")
        d = make_daemon("--socket-group", users.GROUP, "--node-pools", str(pools),
                        "--ssh-known-hosts", str(hosts.known_hosts))
        yield d, person, target, jump
    finally:
        hosts.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)


def test_a_host_behind_a_jump_host_is_reached_through_it(behind_a_jump):
    d, person, target, jump = behind_a_jump
    p = person.skyctl(d, "launch", "-c", "behind", "--infra", "ssh/jp",
                      'set -- $SSH_CONNECTION; echo "on $3:$4 as $(id -un)"')
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"on {target.ip}:{target.port} as {person.name}" in p.stdout
    # The jump host let the person in with their own key (sshd logs its fingerprint; its
    # own start-up checks log in with the test key).
    key = Path(person.home, ".ssh", "id_ed25519.pub")
    fingerprint = subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    assert [ln for ln in jump.log.read_text().splitlines()
            if f"Accepted publickey for {person.name} " in ln and fingerprint in ln], \
        jump.log.read_text()
    p = person.skyctl(d, "down", "behind")
    assert p.returncode == 0, p.stderr
    # Without its jump host the target cannot be reached, though it answers directly.
    jump.kill()
    assert target.run("true").returncode == 0
    p = person.skyctl(d, "launch", "-c", "cut", "--infra", "ssh/jp", "true")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"cannot reach node 0 ({person.name}@{target.ip}:{target.port})" in p.stderr, p.stderr
    assert person.skyctl(d, "down", "cut").returncode == 0


@pytest.mark.parametrize("hops", [1, 2])
def test_a_shared_login_pool_reaches_a_host_behind_a_jump_host(make_daemon, workdir, hops):
    base = Path(tempfile.mkdtemp(prefix="skyd-jump-", dir="/tmp"))
    hosts = JumpHosts(base, count=1 + hops, first_ip=11)
    try:
        start_or_skip(hosts)
        target = hosts[0]
        # The shared login on every hop too; the first one listed is reached first.
        jump_to = ",".join(f"{hosts.user}@{h.ip}:{h.port}" for h in reversed(hosts.hosts[1:]))
        pools = workdir / "pools.yaml"
        pools.write_text(hosts.pool_yaml("jp", hosts=[target]) + f"      proxy_jump: {jump_to}\n")
        d = make_daemon("--node-pools", str(pools), "--ssh-known-hosts", str(hosts.known_hosts))
        p = d.skyctl("launch", "-c", "shared", "--infra", "ssh/jp",
                     'set -- $SSH_CONNECTION; echo "on $3:$4"')
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"on {target.ip}:{target.port}" in p.stdout
        [c] = d.call(protocol.ClusterStatus())
        assert c.nodes[0].proxy_jump == jump_to
    finally:
        hosts.__exit__(None, None, None)
        shutil.rmtree(base, ignore_errors=True)
