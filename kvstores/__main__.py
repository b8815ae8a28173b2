"""``python -m kvstores ...``: replicated redis and memcached, their load clients, the benchmark.

Rule 1: bad arguments and configuration errors print one line and exit 2; Ctrl-C exits 130;
        tracebacks are for bugs only.
"""

from __future__ import annotations

import argparse
import logging
import sys

from kvstores.config import FABRIC_KINDS, FOLLOWER_WRITES, ConfigError, resolve
from kvstores.constants import (
    HEARTBEAT_INTERVAL_US_DEFAULT,
    LOG_SLOTS_DEFAULT,
    PUMP_POLL_US_DEFAULT,
)

LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s"
LOAD_FILES = {"redis": "redis-cli.txt", "memcached": "memcached-cli.txt"}


def _add_server(commands: argparse._SubParsersAction[argparse.ArgumentParser], kind: str) -> None:
    name = f"{kind}-server-replicated" if kind == "redis" else "memcached-replicated"
    binary = "redis-server" if kind == "redis" else "memcached"
    parser = commands.add_parser(
        name, help=f"one replica: a private {binary} behind a replicated front end",
        description=f"Run one replica: a private {binary} (unix socket, no persistence) and a "
        f"front end speaking the {kind} protocol on PORT. The leader proposes writes through "
        "consensus; every replica applies them to its own server. Environment as in the "
        "original: SID, IDS=1,2,3, DORY_REGISTRY_IP=host:port (memcached registry; default: "
        f"embedded, one host). Example: IDS=1,2,3 SID=1 python -m kvstores {name} "
        f"{'--port' if kind == 'redis' else '-p'} 6379",
    )
    if kind == "redis":
        parser.add_argument("--port", type=int, default=6379, help="client port (default 6379)")
    else:
        parser.add_argument("-p", "--port", type=int, default=11211,
                            help="client port (default 11211)")
    parser.add_argument("--id", type=int, default=None, help="this replica's id (env SID)")
    parser.add_argument("--ids", default=None, metavar="1,2,3", help="every replica id (env IDS)")
    parser.add_argument("--replicas", type=int, default=None,
                        help="1 = the unreplicated front end (no consensus); default: all IDS")
    parser.add_argument("--bind", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--advertise", default=None, metavar="HOST:PORT",
                        help="address followers name in redirects (default BIND:PORT)")
    parser.add_argument("--follower-writes", choices=FOLLOWER_WRITES, default="redirect",
                        help="what a follower does with a write: answer with a redirect naming "
                        "the leader (default) or forward it to the leader and relay the reply")
    parser.add_argument("--fabric", choices=FABRIC_KINDS, default="shm",
                        help="consensus fabric: shm (one host) or verbs (RDMA)")
    parser.add_argument("--registry", default=None, metavar="HOST:PORT",
                        help="memcached registry (env DORY_REGISTRY_IP); default: embedded")
    parser.add_argument("--cluster-id", default=None,
                        help=f"registry/shared-memory namespace (env MU_CLUSTER_ID; default "
                        f"kvstores-{kind})")
    parser.add_argument("--fifo", default=None, metavar="PATH",
                        help="control FIFO (default /tmp/fifo-<id>): p pauses, r resumes")
    parser.add_argument("--no-fifo", action="store_true", help="do not create a control FIFO")
    parser.add_argument("--log-slots", type=int, default=LOG_SLOTS_DEFAULT,
                        help=f"consensus log slots (default {LOG_SLOTS_DEFAULT}): how far a "
                        "paused replica may fall behind and still rejoin")
    parser.add_argument("--heartbeat-interval-us", type=int,
                        default=HEARTBEAT_INTERVAL_US_DEFAULT,
                        help=f"heartbeat and scan period (default {HEARTBEAT_INTERVAL_US_DEFAULT})")
    parser.add_argument("--dead-after-us", type=int, default=0,
                        help="a silent leader is dead after this (default: consensus's 20 ms)")
    parser.add_argument("--pump-poll-us", type=int, default=PUMP_POLL_US_DEFAULT,
                        help=f"follower pump period (default {PUMP_POLL_US_DEFAULT}; 0 = adaptive)")
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.set_defaults(kind=kind, run=_run_server)


def _run_server(args: argparse.Namespace) -> int:
    import dataclasses

    from kvstores.config import DEFAULT_FIFO_TEMPLATE
    from kvstores.server import serve

    config = resolve(
        args.kind, replica_id=args.id, ids=args.ids, port=args.port, bind=args.bind,
        advertise=args.advertise, replicas=args.replicas, fabric=args.fabric,
        registry_address=args.registry, cluster_id=args.cluster_id, fifo_path=None,
    )
    if min(args.heartbeat_interval_us, args.dead_after_us, args.pump_poll_us) < 0:
        raise ConfigError("--heartbeat-interval-us, --dead-after-us and --pump-poll-us must be "
                          ">= 0")
    if args.log_slots < 16 or args.log_slots & (args.log_slots - 1):
        raise ConfigError(f"--log-slots {args.log_slots}: need a power of two >= 16")
    fifo = None if args.no_fifo else (args.fifo or DEFAULT_FIFO_TEMPLATE.format(
        id=config.replica_id))
    config = dataclasses.replace(
        config, fifo_path=fifo, log_slots=args.log_slots,
        heartbeat_interval_us=args.heartbeat_interval_us, dead_after_us=args.dead_after_us,
        pump_poll_us=args.pump_poll_us, parent_pid=args.parent_pid,
        follower_writes=args.follower_writes)
    return serve(config)


def _add_load(commands: argparse._SubParsersAction[argparse.ArgumentParser], kind: str,
              mode: str) -> None:
    from kvstores.clients import KEYS_DEFAULT, REQUESTS_DEFAULT

    parser = commands.add_parser(
        f"{kind}-{mode}", help=f"closed-loop {mode} load; latencies to {LOAD_FILES[kind]}",
        description=f"One closed-loop {kind} client ({mode}); writes each request's latency "
        f"in ns to {LOAD_FILES[kind]} and prints p50/p90/p99 and ops/s. Follows redirects to "
        "the leader and retries TRYAGAIN.",
    )
    parser.add_argument("key_size", type=int)
    parser.add_argument("value_size", type=int)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--requests", type=int, default=REQUESTS_DEFAULT,
                        help=f"measured requests (default {REQUESTS_DEFAULT})")
    parser.add_argument("--keys", type=int, default=KEYS_DEFAULT,
                        help=f"distinct keys (default {KEYS_DEFAULT})")
    parser.add_argument("--seed", type=int, default=1, help="key/value seed (default 1)")
    parser.add_argument("--output", default=LOAD_FILES[kind], help="latency file")
    parser.set_defaults(kind=kind, mode=mode, run=_run_load)


def _run_load(args: argparse.Namespace) -> int:
    from kvstores.clients import LoadError, run_load, summary, write_latencies

    print(f"{args.kind}-{args.mode}: seed {args.seed}", flush=True)
    try:
        result = run_load(args.kind, args.mode, args.key_size, args.value_size, args.host,
                          args.port, args.requests, args.keys, args.seed)
    except (LoadError, OSError) as exc:
        print(f"{args.kind}-{args.mode}: error: {exc}", file=sys.stderr)
        return 1
    write_latencies(args.output, result.latencies_ns)
    print(summary(result))
    print(f"latencies (ns) written to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kvstores",
        description="Replicated redis and memcached over Mu consensus (the original's REDIS and "
        "MEMCACHED experiments), their load clients and a benchmark.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_server(commands, "redis")
    _add_server(commands, "memcached")
    for kind in ("redis", "memcached"):
        for mode in ("puts-only", "gets-only", "puts-gets"):
            _add_load(commands, kind, mode)
    from kvstores import bench, failover, rejoin_bench

    bench.add_parser(commands)
    failover.add_parser(commands)
    rejoin_bench.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format=LOG_FORMAT, datefmt="%H:%M:%S")
    try:
        code: int = args.run(args)
        return code
    except ConfigError as exc:
        print(f"python -m kvstores {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npython -m kvstores {args.command}: interrupted (Ctrl-C); stopped.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
