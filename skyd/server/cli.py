"""`skyd serve | capacity`: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the daemon in the foreground",
                       description="Run the skyd daemon in the foreground (systemd runs it so). "
                                   "Settings: flags, then SKYD_* environment variables, then the "
                                   "config file (<state-dir>/config.yaml or --config), then defaults.")
    p.add_argument("--state-dir", help="where the database, logs and clusters live "
                                       "(default: $XDG_STATE_HOME/skyd or ~/.local/state/skyd)")
    p.add_argument("--socket", help="Unix socket to listen on (default: <state-dir>/skyd.sock)")
    p.add_argument("--socket-group", help="make the socket 0660 for this group (default: 0600)")
    p.add_argument("--admin-group", help="members see and control every user's requests")
    p.add_argument("--config", help="config file (YAML)")
    p.add_argument("--long-slots", type=int, help="long requests run at once (default: sized "
                                                  "from CPUs and memory)")
    p.add_argument("--short-slots", type=int, help="short requests run at once (default: sized)")
    p.add_argument("--max-frame", type=int, help="largest frame accepted, bytes (default 16 MiB)")
    p.add_argument("--retention-hours", type=float,
                   help="keep finished requests and their logs this long (default 24; <0: forever)")
    p.add_argument("--drain-timeout", type=float,
                   help="on SIGTERM, wait this long for running requests (default 10 s)")
    p.add_argument("--spares", type=int, help="idle pre-forked workers kept ready (default 2)")
    p.add_argument("--work-cpu", choices=("idle", "background", "nice"),
                   help="how workers, setups and local jobs yield the CPU to the daemon: "
                        "idle, an idle cpu cgroup beside the daemon's where the host allows "
                        "it, else nice; background: idle against everything on the host; "
                        "nice: nice alone (default idle)")
    p.add_argument("--node-pools", help="ssh node pools file (YAML; default: "
                                        "<state-dir>/ssh_node_pools.yaml)")
    p.add_argument("--ssh-known-hosts", help="known_hosts file for node pools "
                                             "(default: each user's ~/.ssh/known_hosts)")
    p.add_argument("--jobs-parallelism", type=int,
                   help="managed-job launches and teardowns in flight at once (default: half "
                        "the long slots, so people's own requests always find room)")
    p.add_argument("--jobs-recover-after", type=float,
                   help="seconds a managed job's node may not answer before the job is "
                        "relaunched elsewhere (default 30)")
    g = p.add_argument_group("fair shares and limits", "shown by `skyctl api info`; 0 means no "
                             "cap where noted; root and the daemon's own user have no per-user caps")
    g.add_argument("--handshake-timeout", type=float, metavar="SECONDS",
                   help="close a connection that has not said hello within this (default 10)")
    g.add_argument("--connections-per-user", type=int, metavar="N",
                   help="open connections one user may hold (default 64; 0: no cap)")
    g.add_argument("--inflight-bytes", type=int, metavar="BYTES",
                   help="bytes of unfinished large frames all connections may hold together "
                        "(default 256 MiB; 0: no cap)")
    g.add_argument("--handshake-max-frame", type=int, metavar="BYTES",
                   help="largest frame accepted before the handshake (default 64 KiB)")
    g.add_argument("--user-long-slots", type=int, metavar="N",
                   help="long slots one user may hold at once (default: half the long slots, "
                        "at least 1; 0: no cap)")
    g.add_argument("--user-pending", type=int, metavar="N",
                   help="long requests one user may have waiting (default 100; 0: no cap)")
    g.add_argument("--long-timeout", type=float, metavar="SECONDS",
                   help="default time limit of a long request (provisioning and setup); a "
                        "request's own --timeout replaces it (default 0: none)")
    g.add_argument("--request-log-bytes", type=int, metavar="BYTES",
                   help="bytes of output kept per request log (default 64 MiB; 0: no cap)")
    g.add_argument("--job-log-bytes", type=int, metavar="BYTES",
                   help="bytes of a job's output kept per node, the rest discarded with a "
                        "marker line (default 1 GiB; 0: no cap)")
    g.add_argument("--max-gpus-per-user", type=int, metavar="N",
                   help="GPUs one user may hold at once (default 0: no cap)")
    g.add_argument("--max-clusters-per-user", type=int, metavar="N",
                   help="clusters one user may have at once (default 0: no cap)")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="also serve /metrics (Prometheus), /healthz, /readyz and a live "
                        "dashboard over HTTP, e.g. 127.0.0.1:9090 (people told apart by who "
                        "owns the connecting socket), or 0.0.0.0:9090 with --tls-cert/--tls-key "
                        "(HTTPS, a token on every request) (default: off)")
    t = p.add_argument_group("remote access over TCP", "a bearer token on every connection "
                             "(skyd token create); TLS required off loopback")
    t.add_argument("--tcp", metavar="HOST:PORT",
                   help="also listen on TCP, e.g. 127.0.0.1:46590, or 0.0.0.0:46590 with "
                        "--tls-cert/--tls-key (default: off; port 46590 when omitted)")
    t.add_argument("--tls-cert", metavar="PEM", help="certificate (chain) for TCP connections "
                   "(and HTTP off loopback)")
    t.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    p.add_argument("--skip-resources-check", action="store_true", default=None,
                   help="start even below the minimum for team use")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")


def _capacity_parser(sub) -> None:
    p = sub.add_parser("capacity", help="print how many requests run at once for a machine size",
                       description="Print the long/short slot table: for this machine and the "
                                   "standard sizes, or for --cpus/--memory.")
    p.add_argument("--cpus", type=float, help="CPUs of the machine to size")
    p.add_argument("--memory", help="memory of the machine to size, e.g. 8G")
    p.add_argument("--calibration", help="calibration file (default: the daemon's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skyd", description="skyd: a lean request server for "
                                     "AI compute. People talk to it with skyctl.")
    from skyd import __version__
    parser.add_argument("--version", action="version", version=f"skyd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    _capacity_parser(sub)
    from skyd.server import install, token_cli
    token_cli.add_parser(sub)
    install.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "capacity":
        return _capacity(args)
    if args.command == "token":
        from skyd.server import token_cli
        return token_cli.run(args)
    if args.command == "install":
        from skyd.server import install
        return install.run(args)
    return serve(args)


def _capacity(args: argparse.Namespace) -> int:
    from skyd.sizing import capacity
    from skyd.server import config
    calib = args.calibration
    if calib is None:
        try:
            calib = str(config.load({}).calibration_path)
        except config.ConfigError:
            calib = None
    return capacity.run(args.cpus, args.memory, args.json, calib)


def serve(args: argparse.Namespace) -> int:
    from skyd.server import config
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    try:
        cfg = config.load(flags, config_file=args.config)
    except config.ConfigError as e:
        print(f"skyd: error: {e}", file=sys.stderr)
        return 2
    from skyd.server import journal
    journal.setup(cfg.log_level)      # `<N>` priorities when stderr is the journal
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)   # it logs every statement
    import uvloop
    try:
        return uvloop.run(_run(cfg, lambda: config.load(flags, config_file=args.config)))
    except KeyboardInterrupt:
        return 0


async def _run(cfg, load_config) -> int:
    from skyd.server.daemon import Daemon, StartupError
    from skyd.server.listeners import ListenError
    daemon: Daemon | None = None
    try:
        daemon = Daemon(cfg)
        daemon.load_config = load_config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stopping.set)
        reloads: set[asyncio.Task] = set()
        started = False

        def on_hup() -> None:
            """`systemctl reload skyd`: read the config again; nothing is dropped."""
            if started and daemon is not None:
                task = loop.create_task(daemon.reload())
                reloads.add(task)
                task.add_done_callback(reloads.discard)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await daemon.startup()
        started = True
    except (StartupError, ListenError, ValueError) as e:
        print(f"skyd: error: {e}", file=sys.stderr)
        # Only a daemon that took the state directory has anything to give back: one
        # refused by the lock touched nothing and must not log "shutting down ... stopped".
        if daemon is not None and daemon.locked:
            await daemon.shutdown()
        return 1
    try:
        await daemon.serve()
    finally:
        await daemon.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
