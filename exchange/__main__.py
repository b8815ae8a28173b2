"""``python -m exchange {serve,demo,bench,watch,certs,bench-snapshot,bench-rejoin,
bench-failover,bench-steady}``: the CLI.

Rule 1: bad arguments and configuration errors print one line and exit 2; Ctrl-C exits 130 with a
        clear message; tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING

from exchange.config import (
    FABRIC_KINDS,
    GRPC_WORKERS_DEFAULT,
    HEARTBEAT_INTERVAL_US_DEFAULT,
    LOG_SLOTS_DEFAULT,
    PUMP_POLL_US_DEFAULT,
    SCAN_FAST_INTERVAL_US_DEFAULT,
    SCAN_INTERVAL_US_DEFAULT,
    SYMBOLS_DEFAULT,
    ConfigError,
    durability_settings,
    instruments_setting,
    resolve_server_config,
)
from exchange.durability import (
    DURABILITY_MODES,
    FLUSH_INTERVAL_S,
    SNAPSHOT_ENTRIES_DEFAULT,
    SYNC_INTERVAL_S,
)
from exchange.limits import SYMBOLS_MAX

if TYPE_CHECKING:
    from exchange.tls import ServerTls

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run one exchange server (one consensus replica + the order books)",
        description="Run one exchange server. Flags override the environment variables "
        "SID, SERVER_URIS and DORY_REGISTRY_IP. Example: SERVER_URIS=1=127.0.0.1:31851,"
        "2=127.0.0.1:31852,3=127.0.0.1:31853 python -m exchange serve --id 1",
        epilog="Failure detection (docs/consensus.md): a C heartbeat thread at real-time "
        "priority, with a standby thread pinned to another CPU, and followers that wait for "
        "their next scan in C. For experiments only: MU_NATIVE_HEARTBEAT=0 (Python heartbeat, "
        "20 ms threshold), MU_NATIVE_STANDBY=0 (no standby beat), MU_CALM_WAIT=0 (Python "
        "scans), MU_BACKGROUND_RT=0 (scanner at normal priority); MU_NATIVE_CACHE=DIR "
        "(where the C helper is compiled; default ~/.cache/mu-exchange).",
    )
    serve.add_argument("--id", type=int, default=None, help="this server's replica id (env SID)")
    serve.add_argument(
        "--server-uris", default=None, metavar="1=HOST:PORT,...",
        help="every server's gRPC address by replica id (env SERVER_URIS)",
    )
    serve.add_argument(
        "--replicas", type=int, default=None,
        help="1 = unreplicated baseline (apply directly, no consensus); default: all SERVER_URIS",
    )
    serve.add_argument("--fabric", choices=FABRIC_KINDS, default="shm",
                       help="consensus fabric: shm (shared memory, one host) or verbs (RDMA)")
    serve.add_argument("--registry", default=None, metavar="HOST:PORT",
                       help="memcached registry (env DORY_REGISTRY_IP); default: embedded")
    serve.add_argument("--cluster-id", default=None,
                       help="namespace in the registry and shared memory (env MU_CLUSTER_ID)")
    serve.add_argument("--listen", default=None, metavar="HOST:PORT",
                       help="bind address (default: this server's SERVER_URIS entry)")
    serve.add_argument("--fifo", default=None, metavar="PATH",
                       help="control FIFO path (default /tmp/fifo-<id>): p pauses silently "
                       "(the heartbeat stops at once), s steps down, r resumes")
    serve.add_argument("--no-fifo", action="store_true", help="do not create a control FIFO")
    serve.add_argument("--grpc-workers", type=int, default=GRPC_WORKERS_DEFAULT,
                       help=f"worker threads for the RPCs served off the event loop (status, book "
                       f"snapshots, health, snapshot transfer) and for order entry's blocking "
                       f"steps (default {GRPC_WORKERS_DEFAULT}); the server takes at most half as "
                       "many order sessions and a quarter as many market-data streams")
    serve.add_argument("--log-slots", type=int, default=LOG_SLOTS_DEFAULT,
                       help=f"consensus log slots, a power of two (default {LOG_SLOTS_DEFAULT}): "
                       "how far a paused replica may fall behind and still rejoin")
    _add_consensus_timings(serve)
    serve.add_argument("--pump-poll-us", type=int, default=PUMP_POLL_US_DEFAULT,
                       help="how often an idle consensus pump looks for new entries, i.e. how "
                       f"late a follower may apply (default {PUMP_POLL_US_DEFAULT}; 0 = "
                       "consensus's adaptive spin-then-back-off polling)")
    _add_durability(serve)
    _add_tls(serve)
    _add_instruments(serve)
    serve.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def _add_durability(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--data-dir", default=None, metavar="DIR",
                       help="keep a journal of applied entries and periodic snapshots in DIR "
                       "(env MU_DATA_DIR; created if missing) and restart from it; without it "
                       "the server runs in memory only and a restart of every server loses "
                       "the market")
    serve.add_argument("--durability", choices=DURABILITY_MODES, default=None,
                       help="with --data-dir: 'sync' (default) acknowledges an order only once "
                       "it is in this server's journal on disk (fdatasync, batched across "
                       "concurrent orders); 'async' acknowledges once committed and journals "
                       f"in the background (written every {FLUSH_INTERVAL_S * 1000:.0f} ms, "
                       f"synced every {SYNC_INTERVAL_S * 1000:.0f} ms): if every server's "
                       "machine loses power at once, the orders acknowledged in the last "
                       f"~{SYNC_INTERVAL_S * 1000:.0f} ms are lost; a kill -9 of every server "
                       f"loses those of the last ~{FLUSH_INTERVAL_S * 1000:.0f} ms")
    serve.add_argument("--snapshot-entries", type=int, default=SNAPSHOT_ENTRIES_DEFAULT,
                       help="with --data-dir: store a snapshot and trim the journal every N "
                       f"applied entries (default {SNAPSHOT_ENTRIES_DEFAULT})")


def _add_instruments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--symbols", default=None, metavar="A,B,C",
                       help="the instrument list: orders for other symbols get INVALID_ARGUMENT "
                       f"(1..{SYMBOLS_MAX} symbols; default {','.join(SYMBOLS_DEFAULT)}). The "
                       "first server to lead a new cluster fixes the list for good in the "
                       "replicated log; a server started with another list serves the "
                       "cluster's and logs an error")
    serve.add_argument("--symbols-file", default=None, metavar="FILE",
                       help="read the instrument list from FILE (symbols separated by commas, "
                       "spaces or newlines; '#' starts a comment)")


def _add_tls(serve: argparse.ArgumentParser) -> None:
    tls = serve.add_argument_group(
        "TLS", "TLS on the server's port, for traders and peer servers alike (make development "
        "certificates with: python -m exchange certs DIR); docs/exchange.md, 'TLS and "
        "authenticated traders'")
    tls.add_argument("--tls-cert", default=None, metavar="FILE",
                     help="this server's certificate (PEM), e.g. DIR/server-1.crt")
    tls.add_argument("--tls-key", default=None, metavar="FILE",
                     help="its private key (PEM), e.g. DIR/server-1.key")
    tls.add_argument("--client-ca", default=None, metavar="FILE",
                     help="mutual TLS: every caller must present a certificate issued by this "
                     "CA, and may use only the client ids its certificate (or --client-map) "
                     "gives it; peer servers are verified with it too")
    tls.add_argument("--peer-ca", default=None, metavar="FILE",
                     help="the CA that issued the other servers' certificates (default: "
                     "--client-ca)")
    tls.add_argument("--client-map", default=None, metavar="FILE",
                     help="'identity = ids' lines: the client ids (e.g. 7, 100-199) a "
                     "certificate's common name or SAN may use, besides those in the "
                     "certificate")
    tls.add_argument("--insecure", action="store_true",
                     help="allow plaintext on a non-loopback --listen address (refused by "
                     "default)")


def _server_tls(args: argparse.Namespace, listen: str, replicas: int) -> ServerTls | None:
    from exchange.tls import check_listen, load_server_tls

    tls = load_server_tls(args.tls_cert, args.tls_key, args.client_ca, args.peer_ca,
                          args.client_map)
    check_listen(listen, tls, args.insecure)
    if tls is not None and tls.peer is None and replicas > 1:
        raise ConfigError("--tls-cert with replicas: pass --client-ca (mutual TLS) or --peer-ca, "
                          "the CA that verifies the other servers' certificates")
    return tls


def _add_consensus_timings(serve: argparse.ArgumentParser) -> None:
    """The failure detector's flags (issue 14)."""
    serve.add_argument("--heartbeat-interval-us", type=int,
                       default=HEARTBEAT_INTERVAL_US_DEFAULT,
                       help="consensus (Python) heartbeat interval "
                       f"(default {HEARTBEAT_INTERVAL_US_DEFAULT}; 0 = consensus's own)")
    serve.add_argument("--scan-interval-us", type=int, default=SCAN_INTERVAL_US_DEFAULT,
                       help="failure-detector scan and permission-switch interval while every "
                       f"peer beats (default {SCAN_INTERVAL_US_DEFAULT}; 0 = the heartbeat "
                       "interval)")
    serve.add_argument("--scan-fast-interval-us", type=int,
                       default=SCAN_FAST_INTERVAL_US_DEFAULT,
                       help="the same while a peer's heartbeat stood still or no leader is "
                       "known: a silent leader is replaced within the dead-after threshold plus "
                       f"about two of these (default {SCAN_FAST_INTERVAL_US_DEFAULT}; 0 = "
                       "--scan-interval-us)")
    serve.add_argument("--dead-after-us", type=int, default=0,
                       help="a silent leader is declared dead after this (default: consensus's)")


def _run_serve(args: argparse.Namespace) -> int:
    from exchange.server import default_fifo_path, serve

    config = resolve_server_config(
        replica_id=args.id,
        server_uris=args.server_uris,
        replicas=args.replicas,
        fabric=args.fabric,
        registry_address=args.registry,
        cluster_id=args.cluster_id,
        fifo_path=None,
        listen=args.listen,
        grpc_workers=args.grpc_workers,
        log_slots=args.log_slots,
    )
    if not args.no_fifo:
        fifo = args.fifo or default_fifo_path(config.replica_id)
        config = dataclasses.replace(config, fifo_path=fifo)
    if min(args.heartbeat_interval_us, args.scan_interval_us, args.scan_fast_interval_us,
           args.dead_after_us, args.pump_poll_us) < 0:
        raise ConfigError("--heartbeat-interval-us, --scan-interval-us, "
                          "--scan-fast-interval-us, --dead-after-us and --pump-poll-us must be "
                          ">= 0")
    data_dir, durability, snapshot_entries = durability_settings(
        args.data_dir, args.durability, args.snapshot_entries)
    config = dataclasses.replace(config, heartbeat_interval_us=args.heartbeat_interval_us,
                                 scan_interval_us=args.scan_interval_us,
                                 scan_fast_interval_us=args.scan_fast_interval_us,
                                 dead_after_us=args.dead_after_us, parent_pid=args.parent_pid,
                                 pump_poll_us=args.pump_poll_us, data_dir=data_dir,
                                 durability=durability, snapshot_entries=snapshot_entries,
                                 tls=_server_tls(args, config.listen, config.replicas),
                                 instruments=instruments_setting(args.symbols, args.symbols_file))
    return serve(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exchange",
        description="mu-exchange: a replicated stock exchange (Mu consensus + order books).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands)
    import exchange.bench as bench
    import exchange.certs as certs
    import exchange.demo as demo
    import exchange.failover_bench as failover_bench
    import exchange.rejoin_bench as rejoin_bench
    import exchange.snapshot_bench as snapshot_bench
    import exchange.watch as watch

    demo.add_parser(commands)
    bench.add_parser(commands)
    snapshot_bench.add_parser(commands)
    rejoin_bench.add_parser(commands)
    failover_bench.add_parser(commands)
    watch.add_parser(commands)
    certs.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format=LOG_FORMAT,
        datefmt="%H:%M:%S",
    )
    try:
        if args.command == "serve":
            return _run_serve(args)
        if args.command == "demo":
            return demo.run(args)
        if args.command == "bench-snapshot":
            return snapshot_bench.run(args)
        if args.command == "bench-rejoin":
            return rejoin_bench.run(args)
        if args.command in ("bench-failover", "bench-steady"):
            return failover_bench.run(args)
        if args.command == "watch":
            return watch.run(args)
        if args.command == "certs":
            return certs.run(args)
        return bench.run(args)
    except ConfigError as exc:
        print(f"python -m exchange {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npython -m exchange {args.command}: interrupted (Ctrl-C); stopped.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
