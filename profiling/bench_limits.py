"""The daemon's memory under many idle connections and under half-sent large frames (issue 11).

    python -m profiling.bench_limits [--tree DIR] [--json]

Starts a real `skyd serve` (state dir under /tmp) and prints, as a Markdown table, VmRSS of
the daemon process alone (/proc/PID/status; not its workers): idle; with 1,000 idle
connections past the Hello handshake (as root: no connections-per-user cap; RLIMIT_NOFILE
raised here, inherited); after closing them; at the peak with 40 connections that each
announce a 15 MiB frame and send all of it but the last byte, counting "busy" answers (frames
past the in-flight budget, --inflight-bytes, default 256 MiB); after closing those; VmHWM.
`--tree DIR` runs another checkout's skyd (DIR first on PYTHONPATH and as cwd), so an old
commit is measured the same way. Bounded; closes every socket, stops the daemon by pid.
"""

import argparse
import json
import os
import resource
import select
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from profiling._daemon import ROOT, BenchDaemon, kill_leftovers
from skyd import protocol

MiB = 1024 * 1024
IDLE_CONNS, FRAMES, FRAME = 1000, 40, 15 * MiB


class TreeDaemon(BenchDaemon):
    def __init__(self, root: Path, tree: Path):
        super().__init__(root, "d")
        self.tree, self.cwd = tree, str(tree)   # `python -m` puts the cwd first on sys.path

    def env(self) -> dict[str, str]:
        env = super().env()
        return {**env, "PYTHONPATH": str(self.tree) + os.pathsep + env["PYTHONPATH"]}


def status(pid: int, key: str) -> float:
    """A /proc/PID/status field (kB) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) / 1024 for ln in f if ln.startswith(key + ":"))


def hello(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    protocol.send_msg(s, protocol.Hello(protocol.PROTOCOL_VERSION, "bench-limits"))
    assert b"welcome" in protocol.recv_frame(s), "no welcome"
    return s


def settle(pid: int, seconds: float = 3.0) -> float:
    """The highest VmRSS seen within `seconds`, stopping once it stays put for 0.5 s."""
    peak, last, still = 0.0, -1.0, 0
    for _ in range(int(seconds / 0.1)):
        rss = status(pid, "VmRSS")
        peak, still, last = max(peak, rss), (still + 1 if rss == last else 0), rss
        if still >= 5:
            break
        time.sleep(0.1)
    return peak


def half_sent_frames(path: str, pid: int) -> dict:
    socks, peak, body, n = [], 0.0, b"\0" * MiB, FRAME // MiB
    try:
        for _ in range(FRAMES):
            socks.append(s := hello(path))
            try:
                s.sendall(protocol.HEADER.pack(FRAME))
                for k in range(n):
                    s.sendall(body if k < n - 1 else body[:-1])
            except OSError:            # refused: the daemon answered and hung up
                pass
            peak = max(peak, status(pid, "VmRSS"))
        peak = max(peak, settle(pid))
        answered = busy = 0
        for s in select.select(socks, [], [], 1.0)[0]:
            s.setblocking(False)
            try:
                data = s.recv(65536)
            except OSError:            # reset: no answer
                continue
            answered += bool(data)
            busy += b"\xa4busy" in data      # ErrorCode.BUSY, a 4-byte msgpack str
        return {"frames_rss_mib": peak, "answered": answered, "busy": busy}
    finally:
        for s in socks:
            s.close()


def run(tree: Path) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < IDLE_CONNS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(IDLE_CONNS + 200, hard), hard))
    git = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip() or "?"
    out: dict = {"tree": str(tree), "commit": git, "loadavg": os.getloadavg()}
    root = Path(tempfile.mkdtemp(prefix="skyd-lim-", dir="/tmp"))
    d = TreeDaemon(root, tree)
    try:
        d.start()
        pid, path, socks = d.pid, str(d.socket), []
        out["idle_rss_mib"] = settle(pid)
        try:
            socks += [hello(path) for _ in range(IDLE_CONNS)]
            out["conns_rss_mib"], out["conns_open"] = settle(pid), len(socks)
        finally:
            for s in socks:
                s.close()
        out["closed_rss_mib"] = settle(pid)
        out.update(half_sent_frames(path, pid))
        time.sleep(2)                  # let the daemon see every close first
        out["after_frames_rss_mib"] = settle(pid)
        out["hwm_mib"] = status(pid, "VmHWM")
    finally:
        d.stop(timeout=15)
        kill_leftovers(root, d.sessions)
        shutil.rmtree(root, ignore_errors=True)
    return out


def table(r: dict) -> str:
    rows = [("idle", "idle_rss_mib"), (f"{r['conns_open']} idle connections", "conns_rss_mib"),
            ("after closing them", "closed_rss_mib"), (f"{FRAMES} half-sent 15 MiB frames, peak "
             f"({r['busy']} busy of {r['answered']} answered)", "frames_rss_mib"),
            ("after closing them", "after_frames_rss_mib"), ("VmHWM at the end", "hwm_mib")]
    head = [f"skyd at `{r['commit']}` ({r['tree']})", "", "| daemon | VmRSS MiB |", "|---|---:|"]
    return "\n".join(head + [f"| {label} | {r[key]:.1f} |" for label, key in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tree", type=Path, default=ROOT, help="checkout whose skyd to run")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args()
    print((json.dumps if a.json else table)(run(a.tree.resolve())))


if __name__ == "__main__":
    main()
