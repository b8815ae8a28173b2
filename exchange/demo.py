"""``python -m exchange demo``: a 3-server cluster, traders, a forced failover, and a summary.

Rule 1: the demo owns what it starts (``LocalCluster``) and removes all of it on every exit path,
        Ctrl-C included.
Rule 2: every figure printed is measured in this run: latency percentiles from the traders'
        samples, the failover time from the first answer of the new leader after the pause, and
        digest equality from every server's status after the load.
Rule 3: with ``--tls`` everything runs over mutual TLS with a fresh development CA in a temporary
        directory (removed at the end): servers, the traders (``trader-demo``'s certificate and
        client ids) and the ``--watch`` dashboard.

Timeline (fractions of the run): traders start at 0; at ``PAUSE_AT`` the leader is paused through
its control FIFO (``p``), leadership moves, traders follow; at ``RESUME_AT`` it is resumed (``r``)
and rejoins as a follower; with ``--restart``, at ``RESTART_AT`` a follower is killed (-9) and
restarted with the same command: it comes back on fresh memory, fetches a peer's snapshot and
catches up the log (the summary shows how long that took). After the run every server must have
applied the same log with equal digests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exchange.cluster import ClusterError, LocalCluster
from exchange.proto import exchange_pb2 as pb
from exchange.tls import ClientTls, certificate_ids, time_seq
from traders.load import ACKED, REJECTED, LoadConfig, LoadReport, LoadRun, Sample
from traders.stats import summarize
from traders.workload import DEFAULT_SYMBOLS

PAUSE_AT = 0.4
RESUME_AT = 0.7
RESTART_AT = 0.8
REJOIN_TIMEOUT_S = 30.0
DEMO_SECONDS_DEFAULT = 12.0
DEMO_TRADERS_DEFAULT = 4
CONVERGE_TIMEOUT_S = 10.0
LEADER_TIMEOUT_S = 10.0
DEMO_CLIENT_ID_BASE = 1_000_000  # --tls: the demo's traders are client ids BASE + 1..


@dataclass(slots=True)
class Failover:
    old_leader: int
    paused_ns: int = 0
    resumed_ns: int = 0
    new_leader: int | None = None


@dataclass(slots=True)
class Restart:
    """The ``--restart`` phase: a follower killed with -9, restarted, caught up."""

    server: int = 0
    killed_ns: int = 0
    caught_up_ns: int = 0
    applied_index: int = 0
    error: str = ""

    def run(self, cluster: LocalCluster) -> None:
        """Kill, restart with the same command, wait until caught up (a thread of its own)."""
        cluster.kill_server(self.server)
        self.killed_ns = time.monotonic_ns()
        cluster.start_server(self.server)
        try:
            status = cluster.wait_caught_up(self.server, REJOIN_TIMEOUT_S)
        except ClusterError as exc:
            self.error = str(exc).splitlines()[0]
            return
        self.caught_up_ns = time.monotonic_ns()
        self.applied_index = status.applied_index


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="3 servers + traders + a failover forced through the FIFO, with a summary",
        description="Start a 3-server cluster on this host (embedded registry, shared-memory "
        "fabric), run traders against it, pause the leader through its control FIFO in the "
        "middle of the run, resume it later, and print what the traders saw and whether all "
        "replicas ended with equal book digests. Cleans up after itself.",
    )
    demo.add_argument("--seconds", type=float, default=DEMO_SECONDS_DEFAULT,
                      help=f"load duration (default {DEMO_SECONDS_DEFAULT:g})")
    demo.add_argument("--traders", type=int, default=DEMO_TRADERS_DEFAULT)
    demo.add_argument("--rate", type=float, default=0.0,
                      help="total orders/s (default 0 = closed loop)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--fabric", choices=("shm", "verbs"), default="shm")
    demo.add_argument("--latency-file", default="", help="dump per-request latencies here")
    demo.add_argument("--keep-logs", action="store_true", help="keep the servers' log files")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--data-dir", default=None, metavar="DIR",
                      help="run durable servers keeping their journals and snapshots in "
                      "DIR/server-<id> (--durability sync); a later demo with the same DIR "
                      "starts from the market the previous one left")
    demo.add_argument("--restart", action="store_true",
                      help="also kill -9 a follower late in the run and restart it with the same "
                      "command: it rejoins by snapshot (the summary shows the rejoin time)")
    demo.add_argument("--watch", action="store_true",
                      help="show the live dashboard (python -m exchange watch) instead of the "
                      "progress bar; q ends the load early")
    demo.add_argument("--svg", default="", metavar="FILE",
                      help="with --watch: write the dashboard's last frame here as an SVG")
    demo.add_argument("--plot-dir", default=".", metavar="DIR",
                      help="where to write demo-latency-cdf.png and demo-timeline.png "
                      "(default: the current directory)")
    demo.add_argument("--no-plots", action="store_true", help="write no pictures")
    demo.add_argument("--tls", action="store_true",
                      help="run everything over mutual TLS: a fresh development CA, server and "
                      "trader certificates (as python -m exchange certs makes) in a temporary "
                      "directory, removed at the end")


def run(args: argparse.Namespace) -> int:
    if args.seconds < 2 or args.traders < 1:
        print("python -m exchange demo: error: need --seconds >= 2 and --traders >= 1",
              file=sys.stderr)
        return 2
    try:
        cluster_id = _demo_cluster_id(args.data_dir)
    except ClusterError as exc:
        print(f"python -m exchange demo: error: {exc}", file=sys.stderr)
        return 2
    tls_dir = _demo_certs(args.traders) if args.tls else None
    cluster = LocalCluster(3, fabric=args.fabric, name="demo", data_dir=args.data_dir,
                           durability="sync" if args.data_dir else None, cluster_id=cluster_id,
                           tls_dir=tls_dir, symbols=DEFAULT_SYMBOLS)
    security = f", mutual TLS, certificates in {tls_dir}" if tls_dir else ""
    print(f"demo: starting 3 exchange servers (cluster {cluster.cluster_id}, fabric "
          f"{args.fabric}, logs in {cluster.workdir}{security})", flush=True)
    print(f"demo: {'durable, data in ' + args.data_dir if args.data_dir else 'memory only'}",
          flush=True)
    try:
        cluster.start()
        return _run_with_cluster(cluster, args)
    except ClusterError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted (Ctrl-C); stopping the servers and cleaning up",
              file=sys.stderr)
        return 130
    finally:
        cluster.stop(keep_logs=args.keep_logs)
        if tls_dir is not None:
            shutil.rmtree(tls_dir, ignore_errors=True)
        print("demo: servers stopped, FIFOs and shared memory removed")


def _demo_certs(traders: int) -> Path:
    """A development CA, 3 server certificates and the trader certificate ``trader-demo``
    naming client ids ``DEMO_CLIENT_ID_BASE`` + 1.. (one per trader), in a temporary directory."""
    from exchange.certs import make_certs

    directory = Path(tempfile.mkdtemp(prefix="mu-demo-certs-"))
    first = DEMO_CLIENT_ID_BASE + 1
    make_certs(directory, 3, f"demo={first}-{first + traders - 1}", [], 1, new_ca=True)
    return directory


def _demo_cluster_id(data_dir: str | None) -> str | None:
    """A durable demo keeps its cluster id in ``DIR/CLUSTER_ID`` (a data directory belongs to
    one cluster), so the next demo on the same directory continues the same market."""
    if data_dir is None:
        return None
    path = Path(data_dir) / "CLUSTER_ID"
    try:
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        cluster_id = f"demo-{os.getpid()}-{time.time_ns() % 10**9}"
        path.write_text(cluster_id + "\n")
    except OSError as exc:
        raise ClusterError(f"--data-dir {data_dir}: {exc}") from None
    return cluster_id


def _trader_tls(cluster: LocalCluster, traders: int) -> dict[str, Any]:
    """The load's TLS settings: ``trader-demo``'s certificate and ids (``_demo_certs``)."""
    if cluster.tls_dir is None:
        return {}
    files = _trader_files(cluster.tls_dir)
    tls = ClientTls.from_files(files[1], files[3], files[5])
    return {"tls": tls, "client_ids": certificate_ids(tls, traders, "--traders"),
            "first_seq": time_seq()}


def _trader_files(tls_dir: Path) -> tuple[str, ...]:
    """``--tls-ca/--tls-cert/--tls-key`` of ``trader-demo``, as command-line flags."""
    return ("--tls-ca", str(tls_dir / "ca.crt"), "--tls-cert", str(tls_dir / "trader-demo.crt"),
            "--tls-key", str(tls_dir / "trader-demo.key"))


def _run_with_cluster(cluster: LocalCluster, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    leader = cluster.wait_for_leader(LEADER_TIMEOUT_S)
    for replica_id, address in cluster.addresses.items():
        role = "leader" if replica_id == leader else "follower"
        print(f"  server {replica_id} at {address} ({role}), FIFO "
              f"{cluster.servers[replica_id].fifo_path}", flush=True)
    if args.data_dir:
        start = cluster.status(leader)
        print(f"  durable (sync): the market starts at log index {start.applied_index} with "
              f"{start.orders_applied} orders executed before (from {args.data_dir})",
              flush=True)
    config = LoadConfig(
        addresses=tuple(cluster.addresses.values()),
        traders=args.traders,
        rate_per_s=args.rate,
        test_ms=int(args.seconds * 1000),
        seed=args.seed,
        symbols=DEFAULT_SYMBOLS,
        **_trader_tls(cluster, args.traders),
    )
    load = LoadRun(config)
    failover = Failover(old_leader=leader)
    restart = Restart()
    restarter: list[threading.Thread] = []
    if args.watch and not sys.stdout.isatty():
        print("demo: --watch needs a terminal; showing the progress bar instead", flush=True)
    if args.watch and sys.stdout.isatty():
        from exchange.watch import DemoDashboard

        cursors: list[int] = []
        bar = DemoDashboard(cluster.server_uris, lambda: [
            (s.end_ns, s.latency_ns) for s in load.samples_since(cursors)
            if s.outcome in (ACKED, REJECTED)], args.seconds, args.svg,
            _trader_files(cluster.tls_dir) if cluster.tls_dir else ())
    else:
        bar = tqdm(total=args.seconds, unit="s", disable=True if args.no_progress else None,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} s {postfix}")

    def tick(answered: int) -> None:
        elapsed = load.elapsed_s()
        if getattr(bar, "quit_requested", False):
            load.stop()  # q in the dashboard
        if not failover.paused_ns and elapsed >= PAUSE_AT * args.seconds:
            current = _serving_leader(cluster, load) or leader
            failover.old_leader = current
            cluster.control(current, "p")
            failover.paused_ns = time.monotonic_ns()
            bar.write(f"demo: {elapsed:.1f} s: paused the leader, server {current} (echo p > "
                      f"{cluster.servers[current].fifo_path})")
        if failover.paused_ns and not failover.resumed_ns and elapsed >= RESUME_AT * args.seconds:
            paused = failover.old_leader
            cluster.control(paused, "r")
            failover.resumed_ns = time.monotonic_ns()
            bar.write(f"demo: {elapsed:.1f} s: resumed server {paused} (echo r); it rejoins as "
                      "a follower")
        if args.restart and not restarter and elapsed >= RESTART_AT * args.seconds:
            serving = _serving_leader(cluster, load) or leader
            restart.server = next(i for i in sorted(cluster.addresses) if i != serving)
            restarter.append(threading.Thread(target=restart.run, args=(cluster,), daemon=True))
            restarter[0].start()
            bar.write(f"demo: {elapsed:.1f} s: killed server {restart.server} (kill -9) and "
                      "restarted it with the same command; it rejoins by snapshot")
        bar.n = min(elapsed, args.seconds)
        bar.set_postfix_str(f"{answered} answers")

    load.start()
    try:
        load.wait(tick)
    finally:
        load.stop()
        load.wait()
        bar.close()
        load.close()
    report = load.report()
    if args.latency_file:
        report.dump(args.latency_file)
    for thread in restarter:
        thread.join(REJOIN_TIMEOUT_S)
    statuses = cluster.wait_converged(CONVERGE_TIMEOUT_S)
    code = _summary(cluster, report, failover, statuses,
                    "" if args.no_plots else args.plot_dir)
    if restarter:
        code = code or _restart_summary(restart)
    if args.data_dir:
        print(f"durable: every acknowledged order is in {args.data_dir}; run the demo again with "
              "the same --data-dir to continue from this market")
    return code


def _restart_summary(restart: Restart) -> int:
    if not restart.caught_up_ns:
        print(f"restart: server {restart.server} did NOT catch up: {restart.error or 'timeout'}")
        return 1
    took_ms = (restart.caught_up_ns - restart.killed_ns) / 1e6
    print(f"restart: server {restart.server} killed (-9), restarted with the same command, "
          f"caught up at index {restart.applied_index} {took_ms:.0f} ms after the kill "
          "(process start, snapshot from a peer, log catch-up)")
    return 0


def _serving_leader(cluster: LocalCluster, load: LoadRun) -> int | None:
    """The server answering the traders right now (leadership may have moved on its own)."""
    address = load.last_server()
    for replica_id, server_address in cluster.addresses.items():
        if server_address == address:
            return replica_id
    return cluster.leader_id()


def _summary(cluster: LocalCluster, report: LoadReport, failover: Failover,
             statuses: dict[int, pb.Status], plot_dir: str) -> int:
    old_address = cluster.addresses[failover.old_leader]
    after_pause = sorted(  # answers of the new leader to requests that lived through the pause
        (s.end_ns, s.replica) for s in report.samples
        if s.outcome == ACKED and s.replica != old_address
        and max(s.start_ns, s.first_failure_ns) >= failover.paused_ns
    )
    recovered_ns = after_pause[0][0] if after_pause else 0
    print("\n== summary")
    for line in report.lines():
        print(line)
    if recovered_ns:
        new_leader = next(i for i, a in cluster.addresses.items() if a == after_pause[0][1])
        print(f"failover: server {failover.old_leader} paused -> server {new_leader} answering "
              f"after {(recovered_ns - failover.paused_ns) / 1e6:.1f} ms (first answer seen by a "
              "trader)")
    else:
        print("failover: NO answer from a new leader after the pause")
    windows = (
        ("before failover", [s for s in report.samples if s.end_ns < failover.paused_ns]),
        ("during failover", [s for s in report.samples
                             if s.start_ns <= recovered_ns and s.end_ns >= failover.paused_ns]),
        ("after failover", [s for s in report.samples if s.start_ns > recovered_ns]),
    )
    for name, samples in windows:
        latency = summarize(s.latency_ns for s in samples if s.outcome == ACKED)
        print(f"latency {name:16} {latency.line()}")
    digests = {i: (s.applied_index, s.state_digest, s.book_digest)
               for i, s in statuses.items()}
    for replica_id, (applied, state, book) in sorted(digests.items()):
        print(f"  server {replica_id}: applied {applied}, book digest {book[:16]}, state digest "
              f"{state[:16]}")
    equal = len({d for d in digests.values()}) == 1
    print("replicas' digests: " + ("ALL EQUAL" if equal else "DIFFERENT (bug!)"))
    ok = equal and bool(recovered_ns) and report.counts.get("failed", 0) == 0
    if plot_dir:
        _pictures(cluster, report, failover, windows, plot_dir)
    return 0 if ok else 1


def _pictures(cluster: LocalCluster, report: LoadReport, failover: Failover,
              windows: tuple[tuple[str, list[Sample]], ...], plot_dir: str) -> None:
    from plots import Marker
    from traders.pictures import latencies_us, write_run_plots

    def seconds(ns: int) -> float:
        return (ns - report.started_ns) / 1e9

    markers = []
    if failover.paused_ns:
        markers.append(Marker(seconds(failover.paused_ns), "pause",
                              f"server {failover.old_leader} paused"))
    if failover.resumed_ns:
        markers.append(Marker(seconds(failover.resumed_ns), "resume",
                              f"server {failover.old_leader} resumed"))
    names = {address: f"server {replica_id}" for replica_id, address in cluster.addresses.items()}
    write_run_plots(report, plot_dir, "demo", "exchange demo",
                    series={name: latencies_us(samples) for name, samples in windows},
                    markers=markers, names=names)
