"""The cgroup v1 helpers the device fence and the cpu pair share (skyd.sizing.cgroupv1,
cpugroups): reading mountinfo and /proc/<pid>/cgroup texts as the kernel writes them, and
removing the pairs daemons left, on plain directories (rmdir works the same there)."""

from __future__ import annotations

from pathlib import Path

from skyd.sizing import cgroupv1, cpugroups

MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 /docker/abc /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
garbage line without a separator
"""


def test_mount_of_finds_a_controller_among_joined_ones_and_its_root():
    assert cgroupv1.mount_of("cpu", MOUNTINFO) == (Path("/sys/fs/cgroup/cpu,cpuacct"), "/")
    assert cgroupv1.mount_of("devices", MOUNTINFO) == (Path("/sys/fs/cgroup/devices"), "/docker/abc")
    assert cgroupv1.mount_of("memory", MOUNTINFO) is None       # v2 alone is not a v1 mount


def test_group_of_reads_the_controllers_line():
    text = "9:name=systemd:/\n4:cpu,cpuacct:/skyd-1/daemon\n1:devices:/a/b\n0::/x\n"
    assert cgroupv1.group_of("cpu", text) == "/skyd-1/daemon"
    assert cgroupv1.group_of("devices", text) == "/a/b"
    assert cgroupv1.group_of("memory", text) is None


def test_on_disk_under_a_mount_root_and_outside_it():
    mount = Path("/sys/fs/cgroup/devices")
    assert cgroupv1.on_disk(mount, "/", "/a/b") == mount / "a/b"
    assert cgroupv1.on_disk(mount, "/docker/abc", "/docker/abc/x") == mount / "x"
    assert cgroupv1.on_disk(mount, "/docker/abc", "/docker/abc") == mount
    assert cgroupv1.on_disk(mount, "/docker/abc", "/elsewhere") == mount


def test_sweep_removes_empty_pairs_but_the_kept_one_and_busy_ones(tmp_path):
    def pair(name: str, busy: bool = False) -> Path:
        d = tmp_path / name
        (d / "daemon").mkdir(parents=True)
        (d / "work").mkdir()
        if busy:                         # a cgroup with a process cannot be removed
            (d / "work" / "cgroup.procs").write_text("1\n")
        return d
    left, kept, busy, other = pair("skyd-aaa"), pair("skyd-bbb"), pair("skyd-ccc", True), pair("x")
    cpugroups.sweep(tmp_path, keep="skyd-bbb")
    assert not left.exists()
    assert kept.exists() and busy.exists() and other.exists()
    assert not cpugroups.remove_if_empty(busy)
    assert cgroupv1.subdirs(tmp_path / "missing") == []
