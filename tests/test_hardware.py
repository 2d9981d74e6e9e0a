"""Tests for skyd.sizing: hardware (detection), units (sizes), calibration, slots and capacity."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from skyd.sizing import capacity
from skyd.sizing.calibration import (
    DEFAULT_CALIBRATION,
    Calibration,
    CalibrationError,
    load_calibration,
    write_calibration,
)
from skyd.sizing.hardware import Hardware, detect, parse_cpu_list
from skyd.sizing.slots import check_minimum, size_slots
from skyd.sizing.units import GiB, KiB, MiB, TiB, format_size, parse_size

V1_UNLIMITED = "9223372036854771712"


# --- fake /proc and /sys trees -------------------------------------------------


def put(root: Path, relpath: str, text: str) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_host(root: Path, cpus: str = "0-7", mem_kb: int = 16 * 1024 * 1024, cgroup: str = "0::/\n") -> Path:
    """A fake host with 8 CPUs / 16 GiB unless told otherwise, and no cgroup limits."""
    put(root, "sys/devices/system/cpu/online", cpus + "\n")
    put(root, "proc/meminfo", f"MemTotal:       {mem_kb} kB\nMemFree:         1234 kB\n")
    put(root, "proc/self/cgroup", cgroup)
    return root


def make_v2(root: Path, own: str, limits: dict[str, dict[str, str]]) -> Path:
    """Pure cgroup v2: `limits` maps a cgroup dir ("" = mount root) to its files."""
    make_host(root, cgroup=f"0::{own}\n")
    base = root / "sys/fs/cgroup"
    put(base, "cgroup.controllers", "cpuset cpu io memory pids\n")
    (base / own.strip("/")).mkdir(parents=True, exist_ok=True)
    for directory, files in limits.items():
        for name, text in files.items():
            put(base / directory, name, text + "\n")
    return root


V1_CGROUP = "12:pids:/job\n4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n"


def make_v1(root: Path, quota: str = "-1", period: str = "100000", mem_limit: str = V1_UNLIMITED) -> Path:
    make_host(root, cgroup=V1_CGROUP)
    base = root / "sys/fs/cgroup"
    for top in ("", "docker", "docker/abc"):
        put(base / "cpu,cpuacct" / top, "cpu.cfs_quota_us", "-1\n")
        put(base / "cpu,cpuacct" / top, "cpu.cfs_period_us", "100000\n")
        put(base / "memory" / top, "memory.limit_in_bytes", V1_UNLIMITED + "\n")
    put(base / "cpu,cpuacct/docker/abc", "cpu.cfs_quota_us", quota + "\n")
    put(base / "cpu,cpuacct/docker/abc", "cpu.cfs_period_us", period + "\n")
    put(base / "memory/docker/abc", "memory.limit_in_bytes", mem_limit + "\n")
    (base / "cpuset").mkdir()  # must not be mistaken for the cpu controller
    put(base / "cpuset", "cpu.cfs_quota_us", "1000\n")
    return root


# --- cgroup v2 ---------------------------------------------------------------------


def test_v2_quota_at_leaf(tmp_path):
    make_v2(tmp_path, "/app/worker", {"app/worker": {"cpu.max": "150000 100000", "memory.max": str(3 * GiB)}})
    hw = detect(tmp_path, env={})
    assert hw.cpus == 1.5
    assert hw.memory_bytes == 3 * GiB
    assert hw.cpu_source == "cgroup v2 cpu.max at /sys/fs/cgroup/app/worker"
    assert hw.memory_source == "cgroup v2 memory.max at /sys/fs/cgroup/app/worker"


def test_v2_nested_ancestor_has_the_lower_limit(tmp_path):
    make_v2(
        tmp_path,
        "/a/b/c",
        {
            "a": {"cpu.max": "200000 100000", "memory.max": str(2 * GiB)},
            "a/b": {"cpu.max": "50000 100000", "memory.max": "max"},
            "a/b/c": {"cpu.max": "400000 100000", "memory.max": str(6 * GiB)},
        },
    )
    hw = detect(tmp_path, env={})
    assert hw.cpus == 0.5
    assert hw.cpu_source == "cgroup v2 cpu.max at /sys/fs/cgroup/a/b"
    assert hw.memory_bytes == 2 * GiB
    assert hw.memory_source == "cgroup v2 memory.max at /sys/fs/cgroup/a"


def test_v2_max_everywhere_means_physical(tmp_path):
    make_v2(
        tmp_path,
        "/a/b",
        {"a": {"cpu.max": "max 100000", "memory.max": "max"}, "a/b": {"cpu.max": "max 100000", "memory.max": "max"}},
    )
    hw = detect(tmp_path, env={})
    assert hw.cpus == 8
    assert hw.cpu_source == "/sys/devices/system/cpu/online (8 CPUs)"
    assert hw.memory_bytes == 16 * GiB
    assert hw.memory_source == "/proc/meminfo"


def test_v2_limit_above_physical_is_ignored(tmp_path):
    make_v2(tmp_path, "/a", {"a": {"cpu.max": "1600000 100000", "memory.max": str(64 * GiB)}})
    hw = detect(tmp_path, env={})
    assert (hw.cpus, hw.memory_bytes) == (8, 16 * GiB)
    assert hw.memory_source == "/proc/meminfo"


def test_v2_quota_without_period_uses_default_period(tmp_path):
    make_v2(tmp_path, "/a", {"a": {"cpu.max": "300000"}})
    assert detect(tmp_path, env={}).cpus == 3


def test_tiny_quota_is_floored_but_stays_positive(tmp_path):
    make_v2(tmp_path, "/a", {"a": {"cpu.max": "1000 100000"}})
    hw = detect(tmp_path, env={})
    assert 0 < hw.cpus <= 0.1


# --- cgroup v1 and hybrid --------------------------------------------------------


def test_v1_cfs_quota_and_memory_limit(tmp_path):
    make_v1(tmp_path, quota="250000", period="100000", mem_limit=str(4 * GiB))
    hw = detect(tmp_path, env={})
    assert hw.cpus == 2.5
    assert hw.cpu_source == "cgroup v1 cpu.cfs_quota_us at /sys/fs/cgroup/cpu,cpuacct/docker/abc"
    assert hw.memory_bytes == 4 * GiB
    assert hw.memory_source == "cgroup v1 memory.limit_in_bytes at /sys/fs/cgroup/memory/docker/abc"


def test_v1_unlimited_sentinel(tmp_path):
    make_v1(tmp_path, quota="-1", mem_limit=V1_UNLIMITED)
    hw = detect(tmp_path, env={})
    assert (hw.cpus, hw.memory_bytes) == (8, 16 * GiB)
    assert hw.memory_source == "/proc/meminfo"


def test_v1_ancestor_limit_applies(tmp_path):
    make_v1(tmp_path)
    put(tmp_path / "sys/fs/cgroup/memory/docker", "memory.limit_in_bytes", str(3 * GiB))
    hw = detect(tmp_path, env={})
    assert hw.memory_bytes == 3 * GiB
    assert hw.memory_source.endswith("at /sys/fs/cgroup/memory/docker")


def test_v1_separate_cpu_hierarchy(tmp_path):
    make_host(tmp_path, cgroup="2:cpuacct:/\n1:cpu:/svc\n0::/\n")
    put(tmp_path / "sys/fs/cgroup/cpu/svc", "cpu.cfs_quota_us", "100000")
    put(tmp_path / "sys/fs/cgroup/cpu/svc", "cpu.cfs_period_us", "100000")
    hw = detect(tmp_path, env={})
    assert hw.cpus == 1
    assert hw.cpu_source == "cgroup v1 cpu.cfs_quota_us at /sys/fs/cgroup/cpu/svc"


def test_hybrid_v1_controllers_win_over_unified(tmp_path):
    make_v1(tmp_path, quota="300000", mem_limit=str(5 * GiB))
    unified = tmp_path / "sys/fs/cgroup/unified"
    put(unified, "cgroup.controllers", "\n")
    # Even if the unified tree claims tighter limits, v1 is authoritative.
    put(unified, "cpu.max", "100000 100000")
    put(unified, "memory.max", str(GiB))
    hw = detect(tmp_path, env={})
    assert hw.cpus == 3
    assert hw.memory_bytes == 5 * GiB
    assert "cgroup v1" in hw.cpu_source and "cgroup v1" in hw.memory_source


def test_hybrid_without_v1_memory_falls_back_to_unified(tmp_path):
    make_host(tmp_path, cgroup="3:cpu:/\n0::/svc\n")
    (tmp_path / "sys/fs/cgroup/cpu").mkdir(parents=True)
    put(tmp_path / "sys/fs/cgroup/unified", "cgroup.controllers", "memory\n")
    put(tmp_path / "sys/fs/cgroup/unified/svc", "memory.max", str(GiB))
    hw = detect(tmp_path, env={})
    assert hw.memory_bytes == GiB
    assert hw.memory_source == "cgroup v2 memory.max at /sys/fs/cgroup/unified/svc"


# --- missing and garbled files --------------------------------------------------------


def test_missing_cgroup_dir_uses_mount_root(tmp_path):
    # cgroup namespaces: /proc/self/cgroup names a path that is not under the mount.
    make_v2(tmp_path, "/", {"": {"cpu.max": "200000 100000", "memory.max": str(GiB)}})
    put(tmp_path, "proc/self/cgroup", "0::/kubepods/pod123/abc\n")
    hw = detect(tmp_path, env={})
    assert hw.cpus == 2
    assert hw.memory_bytes == GiB
    assert hw.cpu_source == "cgroup v2 cpu.max at /sys/fs/cgroup"


def test_path_escaping_the_mount_uses_mount_root(tmp_path):
    make_v2(tmp_path, "/", {"": {"memory.max": str(GiB)}})
    put(tmp_path, "proc/self/cgroup", "0::/../../etc\n")
    assert detect(tmp_path, env={}).memory_bytes == GiB


def test_v1_missing_dir_uses_mount_root(tmp_path):
    make_host(tmp_path, cgroup="4:memory:/gone/away\n0::/\n")
    put(tmp_path / "sys/fs/cgroup/memory", "memory.limit_in_bytes", str(3 * GiB))
    assert detect(tmp_path, env={}).memory_bytes == 3 * GiB


def test_nothing_at_all_does_not_crash(tmp_path):
    hw = detect(tmp_path, env={})  # empty root: no proc, no sys
    assert hw.cpus >= 1
    assert hw.memory_bytes > 0


def test_missing_proc_cgroup_file(tmp_path):
    make_host(tmp_path)
    (tmp_path / "proc/self/cgroup").unlink()
    hw = detect(tmp_path, env={})
    assert (hw.cpus, hw.memory_bytes) == (8, 16 * GiB)


@pytest.mark.parametrize(
    "cpu_max, memory_max",
    [("garbage", "lots"), ("", ""), ("150000 zero", "-5"), ("0 100000", "0"), ("\x00\x01", "1.5G")],
)
def test_garbled_v2_files_are_unlimited(tmp_path, cpu_max, memory_max):
    make_v2(tmp_path, "/a", {"a": {"cpu.max": cpu_max, "memory.max": memory_max}})
    hw = detect(tmp_path, env={})
    assert (hw.cpus, hw.memory_bytes) == (8, 16 * GiB)


def test_garbled_v1_files_and_proc_cgroup(tmp_path):
    make_v1(tmp_path, quota="fast", period="0", mem_limit="unlimited")
    put(tmp_path, "proc/self/cgroup", "nonsense\n" + V1_CGROUP + "::::\n")
    hw = detect(tmp_path, env={})
    assert (hw.cpus, hw.memory_bytes) == (8, 16 * GiB)


def test_garbled_meminfo_and_cpu_online_fall_back(tmp_path):
    put(tmp_path, "proc/meminfo", "MemTotal: lots kB\n")
    put(tmp_path, "sys/devices/system/cpu/online", "zero-three\n")
    put(tmp_path, "proc/self/cgroup", "\xff garbage")
    hw = detect(tmp_path, env={})
    assert hw.cpus >= 1
    assert hw.memory_bytes > 0


def test_other_pid(tmp_path):
    make_v2(tmp_path, "/a", {"a": {"memory.max": str(GiB)}, "b": {"memory.max": str(2 * GiB)}})
    put(tmp_path, "proc/42/cgroup", "0::/b\n")
    assert detect(tmp_path, pid="42", env={}).memory_bytes == 2 * GiB
    assert detect(tmp_path, env={}).memory_bytes == GiB


@pytest.mark.parametrize(
    "text, count",
    [("0-3,5,7-8", 7), ("0", 1), ("0-63\n", 64), ("", 0), ("3-1", 0), ("a-b", 0), ("0-", 0), ("1,,2", 0)],
)
def test_parse_cpu_list(text, count):
    assert parse_cpu_list(text) == count


# --- env overrides ----------------------------------------------------------------------


def test_env_overrides_win(tmp_path):
    make_v2(tmp_path, "/a", {"a": {"cpu.max": "100000 100000", "memory.max": str(GiB)}})
    hw = detect(tmp_path, env={"SKYD_CPUS": "12.5", "SKYD_MEMORY": "48Gi"})
    assert hw == Hardware(cpus=12.5, memory_bytes=48 * GiB, cpu_source="env SKYD_CPUS", memory_source="env SKYD_MEMORY")


def test_env_override_one_side_only(tmp_path):
    make_v2(tmp_path, "/a", {"a": {"cpu.max": "100000 100000", "memory.max": str(GiB)}})
    hw = detect(tmp_path, env={"SKYD_MEMORY": "4G", "SKYD_CPUS": "  "})
    assert hw.cpus == 1 and hw.cpu_source.startswith("cgroup v2")
    assert hw.memory_bytes == 4 * GiB and hw.memory_source == "env SKYD_MEMORY"


@pytest.mark.parametrize(
    "env, name",
    [
        ({"SKYD_CPUS": "lots"}, "SKYD_CPUS"),
        ({"SKYD_CPUS": "0"}, "SKYD_CPUS"),
        ({"SKYD_CPUS": "-2"}, "SKYD_CPUS"),
        ({"SKYD_CPUS": "nan"}, "SKYD_CPUS"),
        ({"SKYD_CPUS": "inf"}, "SKYD_CPUS"),
        ({"SKYD_MEMORY": "8X"}, "SKYD_MEMORY"),
        ({"SKYD_MEMORY": "-1G"}, "SKYD_MEMORY"),
        ({"SKYD_MEMORY": "0"}, "SKYD_MEMORY"),
    ],
)
def test_invalid_env_raises_naming_the_variable(tmp_path, env, name):
    make_host(tmp_path)
    with pytest.raises(ValueError, match=name):
        detect(tmp_path, env=env)


def test_detect_on_this_machine():
    hw = detect()
    assert hw.cpus >= 1
    assert hw.memory_bytes > 0
    assert hw.cpu_source and hw.memory_source


def test_detect_on_this_machine_with_explicit_env():
    hw = detect("/", env={"SKYD_CPUS": "3"})
    assert hw.cpus == 3 and hw.memory_bytes > 0


# --- sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8G", 8 * GiB),
        ("8Gi", 8 * GiB),
        ("8GiB", 8 * GiB),
        ("8GB", 8 * GiB),
        ("8g", 8 * GiB),
        ("8gib", 8 * GiB),
        (" 8 G ", 8 * GiB),
        ("512M", 512 * MiB),
        ("512MiB", 512 * MiB),
        ("1T", TiB),
        ("1024K", MiB),
        ("1048576", MiB),
        ("1048576B", MiB),
        ("1.5G", 3 * GiB // 2),
        ("0.5M", 512 * KiB),
        ("9223372036854775807", 2**63 - 1),  # exact, no float rounding
    ],
)
def test_parse_size_valid(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "G", "-1G", "-5", "8X", "8 GiBs", "1e9", "eight", "8..5G", "12i", "0x10"])
def test_parse_size_invalid(text):
    with pytest.raises(ValueError, match=r"invalid size .*: use e\.g\. 8G, 512M"):
        parse_size(text)


@pytest.mark.parametrize(
    "n, text",
    [
        (8 * GiB, "8.0 GiB"),
        (512 * MiB, "512 MiB"),
        (3 * GiB // 2, "1.5 GiB"),
        (900 * KiB, "900 KiB"),
        (24 * MiB, "24 MiB"),
        (3 * MiB // 2, "1.5 MiB"),
        (100, "100 B"),
        (2 * TiB, "2.0 TiB"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


@given(st.integers(min_value=0, max_value=2**50))
def test_parse_size_round_trips_plain_bytes(n):
    assert parse_size(str(n)) == n


# --- calibration ---------------------------------------------------------------------------


def test_calibration_defaults_when_none_or_missing(tmp_path):
    assert load_calibration(None) is DEFAULT_CALIBRATION
    assert load_calibration(tmp_path / "nope.json") == DEFAULT_CALIBRATION
    assert DEFAULT_CALIBRATION.source == "built-in defaults"


def test_calibration_partial_file_and_extra_keys(tmp_path):
    path = put(tmp_path, "calib.json", json.dumps({"long_worker_bytes": 30 * MiB, "machine": "x", "measured_at": 1}))
    calib = load_calibration(path)
    assert calib.long_worker_bytes == 30 * MiB
    assert calib.short_request_bytes == DEFAULT_CALIBRATION.short_request_bytes
    assert calib.daemon_base_bytes == DEFAULT_CALIBRATION.daemon_base_bytes
    assert calib.source == str(path)


def test_calibration_invalid_json_names_the_file(tmp_path):
    path = put(tmp_path, "calib.json", "{not json")
    with pytest.raises(CalibrationError, match="calib.json") as info:
        load_calibration(path)
    assert "invalid JSON" in str(info.value)


@pytest.mark.parametrize(
    "key, value",
    [
        ("long_worker_bytes", "24M"),
        ("short_request_bytes", 0),
        ("daemon_base_bytes", -1),
        ("long_worker_bytes", 1.5),
        ("short_request_bytes", True),
        ("daemon_base_bytes", None),
    ],
)
def test_calibration_wrong_values_name_the_key(tmp_path, key, value):
    path = put(tmp_path, "calib.json", json.dumps({key: value}))
    with pytest.raises(CalibrationError, match=key) as info:
        load_calibration(path)
    assert str(path) in str(info.value)


def test_calibration_not_an_object(tmp_path):
    with pytest.raises(CalibrationError, match="JSON object"):
        load_calibration(put(tmp_path, "calib.json", "[1, 2]"))


def test_calibration_is_a_valueerror():
    assert issubclass(CalibrationError, ValueError)


def test_write_then_load_calibration(tmp_path):
    path = tmp_path / "sub" / "calib.json"
    write_calibration(path, 20 * MiB, 256 * KiB, 80 * MiB, extra={"machine": "m1", "long_worker_bytes": 1})
    data = json.loads(path.read_text())
    assert data["machine"] == "m1"
    assert data["long_worker_bytes"] == 20 * MiB  # extra cannot shadow the real values
    assert load_calibration(path) == Calibration(20 * MiB, 256 * KiB, 80 * MiB, source=str(path))
    assert [p.name for p in path.parent.iterdir()] == ["calib.json"]  # no temp files left


def test_write_calibration_replaces_and_rejects_bad_values(tmp_path):
    path = tmp_path / "calib.json"
    write_calibration(path, 1, 2, 3)
    write_calibration(path, 4, 5, 6)
    assert load_calibration(path).long_worker_bytes == 4
    with pytest.raises(CalibrationError, match="short_request_bytes"):
        write_calibration(path, 4, 0, 6)
    assert load_calibration(path).short_request_bytes == 5  # old file untouched


# --- slot sizing ---------------------------------------------------------------------------


def machine(cpus: float, memory: int) -> Hardware:
    return Hardware(cpus=cpus, memory_bytes=memory, cpu_source="test", memory_source="test")


def test_slots_4_cpus_8_gib():
    slots = size_slots(machine(4, 8 * GiB), DEFAULT_CALIBRATION)
    assert slots.long >= 64 and slots.short >= 1000
    assert (slots.long, slots.short) == (64, 1024)
    assert (slots.long_bound, slots.short_bound) == ("cpu", "cpu")


def test_slots_2_cpus_24_gib():
    slots = size_slots(machine(2, 24 * GiB), DEFAULT_CALIBRATION)
    assert (slots.long, slots.short) == (32, 512)


def test_slots_1_cpu_1_gib_still_runs():
    slots = size_slots(machine(1, GiB), DEFAULT_CALIBRATION)
    assert (slots.long, slots.short) == (1, 8)
    assert (slots.long_bound, slots.short_bound) == ("minimum", "minimum")


def test_slots_memory_bound():
    slots = size_slots(machine(64, 4 * GiB), DEFAULT_CALIBRATION)
    assert slots.long_bound == "memory" and slots.short_bound == "memory"
    assert slots.long < 64 * 16


def test_slots_fractional_cpus():
    slots = size_slots(machine(0.5, 8 * GiB), DEFAULT_CALIBRATION)
    assert (slots.long, slots.short) == (8, 128)


calibrations = st.builds(
    Calibration,
    long_worker_bytes=st.integers(min_value=MiB, max_value=GiB),
    short_request_bytes=st.integers(min_value=KiB, max_value=64 * MiB),
    daemon_base_bytes=st.integers(min_value=MiB, max_value=GiB),
    source=st.just("hypothesis"),
)
cpu_counts = st.floats(min_value=0.1, max_value=512, allow_nan=False, allow_infinity=False)
memories = st.integers(min_value=256 * MiB, max_value=4 * TiB)


@given(cpu_counts, cpu_counts, memories, memories, st.one_of(st.just(DEFAULT_CALIBRATION), calibrations))
def test_more_hardware_never_gives_fewer_slots(cpus_a, cpus_b, mem_a, mem_b, calib):
    small = size_slots(machine(min(cpus_a, cpus_b), min(mem_a, mem_b)), calib)
    more_cpus = size_slots(machine(max(cpus_a, cpus_b), min(mem_a, mem_b)), calib)
    more_memory = size_slots(machine(min(cpus_a, cpus_b), max(mem_a, mem_b)), calib)
    big = size_slots(machine(max(cpus_a, cpus_b), max(mem_a, mem_b)), calib)
    for bigger in (more_cpus, more_memory, big):
        assert bigger.long >= small.long
        assert bigger.short >= small.short


@given(cpu_counts, memories, calibrations)
def test_slots_respect_minimums_and_bounds(cpus, memory, calib):
    slots = size_slots(machine(cpus, memory), calib)
    assert slots.long >= 1 and slots.short >= 8
    assert {slots.long_bound, slots.short_bound} <= {"cpu", "memory", "minimum"}


# --- minimum for team use --------------------------------------------------------------------


def test_check_minimum_ok():
    assert check_minimum(machine(2, 2 * GiB)) == []
    assert check_minimum(machine(64, 256 * GiB)) == []


def test_check_minimum_reports_each_shortfall():
    hw = Hardware(cpus=1, memory_bytes=GiB, cpu_source="affinity (1 CPU)", memory_source="/proc/meminfo")
    cpu_msg, mem_msg = check_minimum(hw)
    assert cpu_msg == (
        "1 CPU available, skyd needs at least 2 for team use (short by 1); found via affinity (1 CPU)"
    )
    assert mem_msg.startswith(
        "1.0 GiB memory available, skyd needs at least 2.0 GiB for team use (short by 1.0 GiB)"
    )
    assert mem_msg.endswith("found via /proc/meminfo")


def test_check_minimum_fractional_cpus():
    (msg,) = check_minimum(machine(1.5, 8 * GiB))
    assert msg.startswith("1.5 CPUs available") and "(short by 0.5)" in msg


# --- skyd capacity ------------------------------------------------------------------------------


def test_capacity_rows_match_documented_machines():
    rows = capacity.capacity_rows([(4, 8 * GiB), (3, 5 * GiB)], DEFAULT_CALIBRATION)
    assert rows[0] == {
        "cpus": 4.0,
        "memory_bytes": 8 * GiB,
        "memory": "8.0 GiB",
        "long": 64,
        "short": 1024,
        "long_bound": "cpu",
        "short_bound": "cpu",
        "skypilot_long": 8,
        "skypilot_short": 11,
    }
    assert rows[1]["skypilot_long"] is None and rows[1]["skypilot_short"] is None


def test_render_table():
    rows = capacity.capacity_rows([(4, 8 * GiB), (3, 5 * GiB)], DEFAULT_CALIBRATION)
    lines = capacity.render_table(rows, DEFAULT_CALIBRATION).splitlines()
    assert lines[0].split() == ["CPUs", "MEMORY", "LONG", "SHORT", "SKYPILOT", "LONG", "SKYPILOT", "SHORT"]
    assert lines[1].split() == ["4", "8.0", "GiB", "64", "1024", "8", "11"]
    assert lines[2].split()[-2:] == ["-", "-"]
    assert len({len(line) for line in lines[:3]}) == 1  # aligned
    assert lines[-1] == (
        "sized with built-in defaults: long worker 24 MiB, short request 512 KiB, daemon 64 MiB"
    )


def test_run_json_has_standard_rows_and_this_machine():
    out = io.StringIO()
    assert capacity.run(None, None, True, None, out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["calibration"]["source"] == "built-in defaults"
    assert doc["calibration"]["long_worker_bytes"] == 24 * MiB
    rows = doc["rows"]
    assert len(rows) == 6
    assert rows[0]["label"] == "this machine"
    assert rows[0]["cpus"] >= 1 and rows[0]["memory_bytes"] > 0
    assert [(r["cpus"], r["memory_bytes"] // GiB) for r in rows[1:]] == [
        (4, 8),
        (16, 32),
        (32, 64),
        (64, 128),
        (128, 256),
    ]
    assert all(r["skypilot_long"] is not None for r in rows[1:])


def test_run_single_machine():
    out = io.StringIO()
    assert capacity.run(4, "8G", True, None, out=out) == 0
    (row,) = json.loads(out.getvalue())["rows"]
    assert (row["cpus"], row["memory"], row["long"], row["short"]) == (4, "8.0 GiB", 64, 1024)
    assert (row["skypilot_long"], row["skypilot_short"]) == (8, 11)


def test_run_single_machine_table():
    out = io.StringIO()
    assert capacity.run(4, "8G", False, None, out=out) == 0
    text = out.getvalue()
    assert text.splitlines()[1].split() == ["4", "8.0", "GiB", "64", "1024", "8", "11"]
    assert "this machine" not in text and "detected" not in text


def test_run_one_side_detected():
    out = io.StringIO()
    assert capacity.run(None, "8G", True, None, out=out) == 0
    (row,) = json.loads(out.getvalue())["rows"]
    assert row["memory_bytes"] == 8 * GiB and row["cpus"] >= 1


def test_run_bad_memory(capsys):
    out = io.StringIO()
    assert capacity.run(4, "lots", False, None, out=out) == 2
    assert out.getvalue() == ""
    err = capsys.readouterr().err
    assert err.startswith("skyd capacity: error: invalid size 'lots'")
    assert "8G" in err


def test_run_bad_cpus(capsys):
    assert capacity.run(0, "8G", False, None, out=io.StringIO()) == 2
    assert "skyd capacity: error:" in capsys.readouterr().err


def test_run_bad_calibration(tmp_path, capsys):
    path = put(tmp_path, "calib.json", json.dumps({"short_request_bytes": "big"}))
    assert capacity.run(4, "8G", False, str(path), out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("skyd capacity: error:") and "short_request_bytes" in err and str(path) in err


def test_run_uses_calibration_file(tmp_path):
    path = tmp_path / "calib.json"
    write_calibration(path, 48 * MiB, 1 * MiB, 64 * MiB)
    out = io.StringIO()
    assert capacity.run(64, "16G", False, str(path), out=out) == 0
    lines = out.getvalue().splitlines()
    # Memory bounds both queues of this machine: twice the default cost per long worker
    # and per short request halves each (defaults: 305 long, 14681 short).
    assert lines[1].split() == ["64", "16.0", "GiB", "152", "7340", "-", "-"]
    assert f"sized with {path}: long worker 48 MiB, short request 1 MiB" in lines[-1]
    default = io.StringIO()
    assert capacity.run(64, "16G", False, None, out=default) == 0
    assert default.getvalue().splitlines()[1].split()[3:5] == ["305", "14681"]
