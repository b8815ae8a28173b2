"""``python -m traders {load,shell}``: the trader clients' command line.

Rule 1: servers come from ``--servers`` or the original's ``SERVER_URIS`` (``1=host:port,...``);
        the trader count from ``--traders`` or ``TRADERS_NUM``; the run length from ``--test-ms`` or
        ``TEST_MS``. Bad values print one line and exit 2.
Rule 2: with ``--tls-ca`` every call is TLS (``exchange.tls``); with a certificate
        (``--tls-cert/--tls-key``) the client ids default to the ones it names (its first ids, one
        per trader) and, since such ids are reused from run to run, the first seq defaults to the
        time in microseconds (always above the previous run's seqs).
"""

from __future__ import annotations

import argparse
import os
import random
import sys

from exchange.config import ConfigError, env_int, parse_server_uris
from exchange.tls import ClientTls, add_client_tls_arguments, certificate_ids, time_seq
from traders.client import GIVE_UP_S, ClusterConnection, wait_for_any_server
from traders.workload import DEFAULT_SYMBOLS

TEST_MS_DEFAULT = 10_000  # the original ran --test_ms 120000; 10 s is enough for stable figures
TRADERS_DEFAULT = 4
LATENCY_FILE_DEFAULT = "dump-traders.txt"


def server_addresses(text: str | None) -> tuple[str, ...]:
    """Addresses from ``--servers`` (``1=h:p,...`` or ``h:p,h:p``) or ``SERVER_URIS``."""
    raw = text if text is not None else os.environ.get("SERVER_URIS", "")
    if not raw.strip():
        raise ConfigError("no servers: pass --servers 1=host:port,... or set SERVER_URIS")
    if "=" in raw:
        return tuple(parse_server_uris(raw).values())
    addresses = tuple(a.strip() for a in raw.split(",") if a.strip())
    from exchange.config import check_address

    for address in addresses:
        check_address(address, "--servers")
    return addresses


def _load_ids(args: argparse.Namespace, traders: int, tls: ClientTls | None
              ) -> tuple[tuple[int, ...], int]:
    """(client ids, first seq) of a load run: --client-ids, else the certificate's, else
    random ids (Rule 2)."""
    from exchange.tls import parse_id_ranges

    ids: tuple[int, ...] = ()
    if args.client_ids:
        ranges = parse_id_ranges(args.client_ids, "--client-ids")
        ids = tuple(i for first, last in ranges
                    for i in range(first, min(last, first + traders) + 1))[:traders]
        if len(ids) < traders:
            raise ConfigError(f"--client-ids {args.client_ids}: {len(ids)} ids for {traders} "
                              f"traders")
    else:
        ids = certificate_ids(tls, traders, "--traders")
    return ids, time_seq() if ids else 1


def _run_load(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from traders.load import STREAM_WINDOW_DEFAULT, LoadConfig, LoadRun

    traders = args.traders if args.traders is not None else env_int("TRADERS_NUM",
                                                                   TRADERS_DEFAULT)
    test_ms = args.test_ms if args.test_ms is not None else env_int("TEST_MS", TEST_MS_DEFAULT)
    if traders < 1:
        raise ConfigError(f"--traders {traders}: need at least 1")
    if test_ms < 1:
        raise ConfigError(f"--test-ms {test_ms}: need at least 1")
    if args.rate < 0:
        raise ConfigError(f"--rate {args.rate}: must be >= 0 (0 = closed loop)")
    if not args.wait_for_servers > 0:
        raise ConfigError(f"--wait-for-servers {args.wait_for_servers:g}: must be > 0")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    if (args.batch != 1 or args.window is not None) and not args.stream:
        raise ConfigError("--batch and --window apply to --stream sessions only")
    tls = ClientTls.from_args(args)
    client_ids, first_seq = _load_ids(args, traders, tls)
    config = LoadConfig(
        addresses=server_addresses(args.servers),
        traders=traders,
        rate_per_s=args.rate,
        test_ms=test_ms,
        seed=seed,
        symbols=tuple(args.symbols.split(",")),
        stream=args.stream,
        batch=args.batch,
        window=args.window if args.window is not None else STREAM_WINDOW_DEFAULT,
        client_ids=client_ids,
        first_seq=first_seq,
        tls=tls,
    )
    problem = config.check()
    if problem:
        raise ConfigError(problem)
    loop = f"open loop {args.rate:g}/s" if args.rate else "closed loop"
    if args.stream:
        loop = (f"sessions, {config.batch} orders per message, {config.window} messages "
                f"unanswered per trader")
    security = "plaintext" if tls is None else "TLS" if tls.cert is None else "mutual TLS"
    ids = (f", client ids {client_ids[0]}..{client_ids[-1]} from seq {first_seq}"
           if client_ids else "")
    print(f"load: {traders} traders, {loop}, {test_ms} ms, seed {seed}, servers "
          f"{', '.join(config.addresses)} ({security}{ids})")
    waiting = ClusterConnection(config.addresses, tls)
    try:  # traders.client Rule 8: one clear line when no server is there at all
        unreachable = wait_for_any_server(waiting, args.wait_for_servers, lambda error: print(
            f"load: waiting for a server to answer ({error})", file=sys.stderr))
    finally:
        waiting.close()
    if unreachable is not None:
        raise ConfigError(f"no server answered within {args.wait_for_servers:g} s: are they "
                          f"running (python -m exchange serve), and is --servers (or "
                          f"SERVER_URIS) right? Last error: {unreachable}")
    run = LoadRun(config)
    run.start()
    bar = tqdm(total=test_ms / 1000, unit="s", disable=True if args.no_progress else None,
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} s {postfix}")

    def tick(answered: int) -> None:
        bar.n = min(run.elapsed_s(), test_ms / 1000)
        bar.set_postfix_str(f"{answered} answers")

    try:
        run.wait(tick)
    except KeyboardInterrupt:
        run.stop()
        run.wait()
        print("\nload: interrupted (Ctrl-C); reporting what was measured", file=sys.stderr)
    finally:
        bar.close()
        run.close()
    report = run.report()
    for line in report.lines():
        print(line)
    if args.stream:
        print(f"unsolicited fills reported on sessions: {run.unsolicited}")
    if args.latency_file:
        report.dump(args.latency_file)
        print(f"per-request latencies written to {args.latency_file}")
    if not args.no_plots:
        from traders.pictures import write_run_plots

        write_run_plots(report, args.plot_dir, "load",
                        f"traders load: {traders} traders, {loop}, seed {seed}")
    for error in run.errors[:3]:
        print(f"  error: {error}", file=sys.stderr)
    if run.refused:
        print(f"load: stopped: the exchange refused this caller: {run.refused}", file=sys.stderr)
        return 1
    return 1 if report.counts.get("failed", 0) else 0


def _run_shell(args: argparse.Namespace) -> int:
    from traders.shell import run_shell

    if args.client_id < 0 or (args.first_seq is not None and args.first_seq < 1):
        raise ConfigError("--client-id must be >= 1 and --first-seq >= 1")
    tls = ClientTls.from_args(args)
    first_seq = args.first_seq or 1
    from_certificate = certificate_ids(tls, 1, "--client-id") if not args.client_id else ()
    if from_certificate:  # Rule 2
        client_id, first_seq = from_certificate[0], args.first_seq or time_seq()
    else:
        client_id = args.client_id or random.SystemRandom().randrange(1, 2**48)
    if args.client_id and first_seq == 1:
        print("note: a client id reused against the same cluster gets its earlier replies back "
              "(marked duplicate) for the seqs it already used; pass --first-seq to start higher",
              file=sys.stderr)
    return run_shell(server_addresses(args.servers), client_id, first_seq, args.unary, tls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m traders",
                                     description="mu-exchange trader clients.")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser(
        "load", help="N traders sending orders for a while, then a latency report",
        description="Send orders from N trader threads (closed loop, or open loop at --rate), "
        "following the leader across failovers, and report counts, latency percentiles and "
        "failover gaps. Example: SERVER_URIS=1=127.0.0.1:31851,2=127.0.0.1:31852,"
        "3=127.0.0.1:31853 python -m traders load --traders 4 --test-ms 10000",
    )
    load.add_argument("--servers", default=None, metavar="1=HOST:PORT,...",
                      help="servers (default: env SERVER_URIS)")
    load.add_argument("--traders", type=int, default=None,
                      help=f"trader threads (default: env TRADERS_NUM or {TRADERS_DEFAULT})")
    load.add_argument("--test-ms", type=int, default=None,
                      help=f"run length in ms (default: env TEST_MS or {TEST_MS_DEFAULT})")
    load.add_argument("--rate", type=float, default=0.0,
                      help="total orders/s over all traders (default 0 = closed loop)")
    load.add_argument("--stream", action="store_true",
                      help="each trader uses one OrderSession stream instead of unary calls")
    load.add_argument("--batch", type=int, default=1, metavar="K",
                      help="with --stream: orders per session message (1..50, default 1)")
    load.add_argument("--window", type=int, default=None, metavar="W",
                      help="with --stream: messages a trader keeps unanswered (default 4; "
                      "W x K <= 100)")
    load.add_argument("--wait-for-servers", type=float, default=GIVE_UP_S, metavar="S",
                      help="at start, wait this long for any server to answer before giving "
                      "up with an error (default %(default)g s)")
    load.add_argument("--seed", type=int, default=None, help="workload seed (default: random)")
    load.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS),
                      help="comma-separated symbols to trade (default %(default)s)")
    load.add_argument("--latency-file", default=LATENCY_FILE_DEFAULT,
                      help="per-request latencies file ('' = none)")
    load.add_argument("--no-progress", action="store_true", help="no progress bar")
    load.add_argument("--plot-dir", default=".", metavar="DIR",
                      help="where to write load-latency-cdf.png and load-timeline.png "
                      "(default: the current directory)")
    load.add_argument("--no-plots", action="store_true", help="write no pictures")
    load.add_argument("--client-ids", default=None, metavar="IDS",
                      help="the traders' client ids, e.g. 1000-1007 (default: the first ids of "
                      "--tls-cert's certificate, else random ids)")
    add_client_tls_arguments(load)
    shell = commands.add_parser("shell", help="interactive trader",
                                description="An interactive trader; type help inside.")
    shell.add_argument("--servers", default=None, metavar="1=HOST:PORT,...",
                       help="servers (default: env SERVER_URIS)")
    shell.add_argument("--client-id", type=int, default=0,
                       help="default: the first id of --tls-cert's certificate, else random")
    shell.add_argument("--unary", action="store_true",
                       help="unary calls instead of an order session (no unsolicited fills)")
    shell.add_argument("--first-seq", type=int, default=None,
                       help="first sequence number (order ids are <client id>.<seq>; default 1, "
                       "or the time in microseconds with a certificate's client id)")
    add_client_tls_arguments(shell)
    args = parser.parse_args(argv)
    try:
        if args.command == "load":
            return _run_load(args)
        return _run_shell(args)
    except ConfigError as exc:
        print(f"python -m traders {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\npython -m traders {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
