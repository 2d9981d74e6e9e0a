"""The HTTP side's metrics and health (issue 16): /metrics read with prometheus-client's own
parser after real requests through the real skyctl, /healthz and /readyz through recovery
and drain, the address rules of --http, and the shipped alert rules and Grafana dashboard
checked against promtool and against the metrics a daemon really serves."""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import msgspec

from conftest import ROOT, raw_frames, wait_until, write_task
from http_side import get, require_tool, scrape, start_with_http, state_as_root, value, wait_for
from skyd import protocol
from skyd.protocol import HEADER
from skyd.taskspec import Task

DEPLOY = ROOT / "deploy"
# Every label the metrics may carry: bounded sets (no user, uid, request or job id).
LABELS = {"op", "queue", "status", "state", "infra", "pool", "kind", "limit", "le", "version",
          "protocol", "implementation", "major", "minor", "patchlevel", "generation"}


def test_metrics_after_real_requests(make_daemon, workdir):
    d = start_with_http(make_daemon)
    for _ in range(2):
        d.skyctl("status", check=True)
    assert d.skyctl("launch", "-c", "m1", "echo hi").returncode == 0
    broken = write_task(workdir, "broken.yaml", "setup: exit 3\nrun: echo never\n")
    assert d.skyctl("launch", "-c", "m2", str(broken)).returncode == 1
    slow = write_task(workdir, "slow.yaml", "setup: sleep 30\n")
    p = d.skyctl("launch", "-c", "m3", "--timeout", "1", str(slow))
    assert p.returncode == 1 and "time limit" in p.stderr
    p = d.skyctl("jobs", "launch", "--async", "-n", "mj", "echo managed")
    assert p.returncode == 0, p.stderr
    # Not the protocol: a frame of garbage, and a frame over the size limit.
    raw_frames(d.socket, [HEADER.pack(3) + b"\xc1\xc1\xc1"])
    raw_frames(d.socket, [HEADER.pack(64 * 1024 * 1024)])
    assert wait_until(lambda: d.call(protocol.JobsQueue())[0].status == "SUCCEEDED", 60)
    # ... and its cluster torn down (a down request)
    assert wait_for(lambda: value(scrape(d.base), "skyd_requests_total", op="down", queue="long",
                                  status="succeeded") == 1, 60)

    m = scrape(d.base)
    info = d.call(protocol.ApiInfo())
    assert value(m, "skyd_build_info", version=info.version, protocol=str(info.protocol)) == 1
    assert value(m, "skyd_ready") == 1
    done = {(op, status): value(m, "skyd_requests_total", op=op, queue=queue, status=status)
            for op, queue, status in [("status", "short", "succeeded"),
                                      ("launch", "long", "succeeded"),
                                      ("launch", "long", "failed"),
                                      ("jobs_launch", "jobs", "succeeded")]}
    assert done[("status", "succeeded")] >= 2
    # m1, and the managed job's own launch of its cluster (its teardown is a down)
    assert done[("launch", "succeeded")] == 2
    assert done[("launch", "failed")] == 2           # the broken setup, the time limit
    assert done[("jobs_launch", "succeeded")] == 1
    # The histograms count every long request that ran, in buckets that add up.
    long_ran = sum(v for (name, labels), v in m.items() if name == "skyd_requests_total"
                   and ("queue", "long") in labels)
    assert value(m, "skyd_request_duration_seconds_count", queue="long") == long_ran
    assert value(m, "skyd_request_duration_seconds_bucket", queue="long", le="+Inf") == long_ran
    assert value(m, "skyd_request_duration_seconds_sum", queue="long") > 1.0   # the 1 s limit
    assert value(m, "skyd_request_queue_wait_seconds_count", queue="short") >= 2
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in m.items()
                     if name == "skyd_request_duration_seconds_bucket"
                     and ("queue", "long") in labels)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)      # cumulative
    # Live state: queues, slots, managed jobs, clusters, connections.
    assert value(m, "skyd_queue_slots", queue="long") == info.long_slots
    assert value(m, "skyd_queue_slots", queue="short") == info.short_slots
    for queue in ("long", "short", "jobs"):
        assert value(m, "skyd_requests_pending", queue=queue) == 0
    assert value(m, "skyd_requests_running", queue="long") == 0
    assert value(m, "skyd_managed_jobs_finished_total", state="SUCCEEDED") == 1
    assert value(m, "skyd_managed_jobs", state="RUNNING") == 0
    statuses = [c.status for c in d.call(protocol.ClusterStatus(all_users=True))]
    assert "UP" in statuses
    for status in set(statuses):
        assert value(m, "skyd_clusters", status=status, infra="local") == statuses.count(status)
    assert value(m, "skyd_protocol_errors_total", kind="malformed_frame") == 1
    assert value(m, "skyd_limits_hit_total", limit="max_frame") == 1
    assert value(m, "skyd_limits_hit_total", limit="long_timeout") == 1
    assert value(m, "skyd_limits_hit_total", limit="user_pending") == 0
    with d.connect():
        assert value(scrape(d.base), "skyd_connections") == 1
    assert value(m, "process_resident_memory_bytes") > 10e6
    # Every long request's start and end was committed; some commits carried several rows.
    commits, rows = value(m, "skyd_store_commits_total"), value(m, "skyd_store_rows_written_total")
    assert 0 < commits <= rows and rows >= 2 * long_ran, (commits, rows)
    # Bounded cardinality: no label names a person or a request.
    assert {k for _, labels in m for k, _ in labels} <= LABELS
    text = get(d.base + "/metrics")[1]
    assert "root" not in text and "m1" not in text


def test_metrics_content_negotiation_and_probes(make_daemon):
    d = start_with_http(make_daemon)
    assert get(d.base + "/healthz") == (200, "ok\n")
    assert get(d.base + "/readyz") == (200, "ready\n")
    status, text = get(d.base + "/metrics",
                       {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and text.rstrip().endswith("# EOF")
    # The probes carry no per-user data: any Host will do. The dashboard answers only to
    # loopback names (a page elsewhere must not read it through DNS rebinding).
    assert get(d.base + "/readyz", {"Host": "skyd.example"})[0] == 200
    assert get(d.base + "/", {"Host": "localhost"})[0] == 200
    status, text = get(d.base + "/api/events", {"Host": "evil.example"})
    assert status == 421 and "localhost" in text
    assert get(d.base + "/nothing-here")[0] == 404


def _stale_rows(db: Path, n: int) -> None:
    """`n` exec requests RUNNING when the daemon died: recovery fails each (not idempotent)."""
    op = msgspec.msgpack.encode(protocol.Exec(task=Task(run="true"), cluster="gone"))
    now = time.time()
    rows = [(str(uuid.uuid4()), "exec", "long", "running", 0, "root", "gone", op, now, now)
            for _ in range(n)]
    with sqlite3.connect(db) as con:
        con.executemany("INSERT INTO requests (id, name, queue, status, uid, user, cluster, op,"
                        " created_at, started_at) VALUES (?,?,?,?,?,?,?,?,?,?)", rows)


def test_readyz_is_false_while_recovering(make_daemon):
    d = start_with_http(make_daemon)
    d.stop()
    # Enough for a recovery of a few seconds (each is failed, logged and committed in turn)
    # that the probe, polled every 5 ms, sees many times.
    _stale_rows(d.state_dir / "skyd.db", 600)
    d.spawn()
    seen: list[tuple[int, str]] = []

    def answers() -> bool:
        try:
            seen.append(get(d.base + "/readyz", timeout=2))
        except OSError:
            return False                        # not listening yet
        return seen[-1][0] == 200

    assert wait_for(answers, 60, 0.005), (seen[-3:], d.log())
    starting = [body for status, body in seen if status == 503]
    assert starting and all("starting" in b for b in starting), seen[:3]
    # It turned ready only once recovered: every interrupted request failed by then.
    d.wait_ready()
    recs = d.call(protocol.ApiStatus(all_statuses=True, limit=10_000))
    assert len(recs) == 600 and {r.status for r in recs} == {protocol.Status.FAILED}


def test_readyz_is_false_while_draining_and_healthz_stays_true(make_daemon, workdir):
    d = start_with_http(make_daemon, "--drain-timeout", "4")
    slow = write_task(workdir, "slow.yaml", "setup: sleep 30\n")
    rid = d.skyctl("launch", "--async", "-c", "dr", str(slow), check=True).stdout.strip()
    assert wait_until(lambda: d.request(rid).status is protocol.Status.RUNNING, 15)
    assert get(d.base + "/readyz")[0] == 200
    d.proc.send_signal(signal.SIGTERM)
    draining = wait_for(lambda: get(d.base + "/readyz")[0] == 503, 5)
    assert draining
    status, body = get(d.base + "/readyz")
    assert status == 503 and "draining" in body
    assert get(d.base + "/healthz") == (200, "ok\n")
    assert value(scrape(d.base), "skyd_ready") == 0
    assert d.proc.wait(30) == 0
    try:
        get(d.base + "/healthz", timeout=2)
        raise AssertionError("still answering after the daemon exited")
    except OSError:
        pass


def _serve(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "skyd", "serve", "--state-dir", str(state_dir),
                           "--skip-resources-check", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_http_address_must_be_loopback_and_free(workdir):
    for address, why in [("0.0.0.0:9090", "0.0.0.0 is not a loopback address"),
                         ("10.1.2.3:80", "10.1.2.3 is not a loopback address"),
                         ("vm.example:80", "not an IP address"),
                         ("127.0.0.1:http", "is not HOST:PORT")]:
        p = _serve(workdir / "s", "--http", address)
        assert p.returncode == 2, (address, p.stderr)
        assert why in p.stderr, p.stderr
    assert not (workdir / "s").exists()                     # refused before touching anything
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = _serve(workdir / "s", "--socket", str(workdir / "s.sock"), "--http",
                   f"127.0.0.1:{port}")
    assert p.returncode == 1
    assert f"cannot serve HTTP on 127.0.0.1:{port}: Address already in use" in p.stderr, p.stderr
    assert not (workdir / "s.sock").exists()


def test_config_file_key_and_ipv6_loopback(make_daemon, workdir):
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    (workdir / "config.yaml").write_text(f'http: "[::1]:{port}"\n')
    d = make_daemon("--config", str(workdir / "config.yaml"))
    assert get(f"http://[::1]:{port}/readyz") == (200, "ready\n")
    assert f"HTTP on http://[::1]:{port}/" in d.log()


# ---- what ships in deploy/ ----------------------------------------------------------------

def _metric_names(exprs: list[str]) -> set[str]:
    return {n for e in exprs for n in re.findall(r"\b((?:skyd|process)_[a-z_]+)\b", e)}


def _served(base: str) -> set[str]:
    """Every series name /metrics offers, also of families with no sample yet (no pools)."""
    from prometheus_client.parser import text_string_to_metric_families
    names = set()
    for family in text_string_to_metric_families(get(base + "/metrics")[1]):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def test_alert_rules_pass_promtool_and_name_served_metrics(make_daemon, workdir):
    promtool = require_tool("promtool")
    rules = DEPLOY / "prometheus"
    for cmd in (["check", "rules", "skyd-alerts.yml"], ["test", "rules", "skyd-alerts.test.yml"]):
        p = subprocess.run([promtool, *cmd], cwd=rules, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "SUCCESS" in p.stdout + p.stderr
    # The Grafana dashboard's queries are PromQL that promtool accepts (as recording rules,
    # with its variables given values) ...
    dashboard = json.loads((DEPLOY / "grafana" / "skyd-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 15
    concrete = [e.replace("$__rate_interval", "1m").replace("$instance", ".*").replace("$job", "skyd")
                for e in exprs]
    groups = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(concrete)]}]}
    (workdir / "queries.yml").write_text(json.dumps(groups))
    p = subprocess.run([promtool, "check", "rules", str(workdir / "queries.yml")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    # ... and both name only metrics that a daemon really serves.
    d = start_with_http(make_daemon)
    d.skyctl("status", check=True)
    alerts = (rules / "skyd-alerts.yml").read_text()
    missing = (_metric_names(exprs) | _metric_names([alerts])) - _served(d.base)
    assert not missing, missing


def test_pool_hosts_in_metrics_and_on_the_dashboard(make_daemon, workdir):
    pools = workdir / "pools.yaml"
    pools.write_text("gpus:\n  hosts: [127.0.0.2, {ip: 127.0.0.3, port: 2222}]\n"
                     "team:\n  shared_login: true\n  user: ubuntu\n  hosts: [127.0.0.4]\n")
    d = start_with_http(make_daemon, "--node-pools", str(pools))
    m = scrape(d.base)
    assert value(m, "skyd_pool_hosts", pool="gpus") == 2
    assert value(m, "skyd_pool_hosts", pool="team") == 1
    assert value(m, "skyd_pool_hosts_in_use", pool="gpus") == 0
    assert value(m, "skyd_pool_hosts_unreachable", pool="team") == 0
    hosts = state_as_root(d.base)["hosts"]
    assert [(h["pool"], h["address"], h["cluster"], h["shared_login"]) for h in hosts] == [
        ("gpus", "127.0.0.2:22", None, False), ("gpus", "127.0.0.3:2222", None, False),
        ("team", "ubuntu@127.0.0.4:22", None, True)]
