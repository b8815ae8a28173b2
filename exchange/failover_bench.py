"""``python -m exchange bench-failover`` and ``bench-steady``: fail-over as traders see it, and
leader changes under a fault-free trader load (issue 14).

Rule 1: one 3-server cluster (``LocalCluster``) and ``--traders`` traders (closed loop, or
        open loop at ``--rate`` orders a second)
        (``traders.load.LoadRun``, leader-following, unary) for the whole run; the cluster stops
        every server and the command kills every CPU hog it started, by pid, on every exit path.
Rule 2 (bench-failover): each round waits until every server names the same leader and the
        server paused in the previous round has caught up, lets the load run ``STEADY_S``, then
        writes ``p`` (``--step``: ``s``) into the leader's control FIFO (``--sigstop``: sends
        the process SIGSTOP) and measures from just before that to the earliest answer a
        trader received from another server (the samples' end times; CLOCK_MONOTONIC is
        shared by processes); ``r`` (SIGCONT) then resumes it.
Rule 3: the report gives p50/p90/p99/max over the rounds with a verdict against
        ``TARGET_FAILOVER_P50_MS``, and beside it the servers' own view: from the pause to the
        new leader's ``leader is now this server`` log line (millisecond resolution), so the
        election and the traders' retries are told apart.
Rule 4 (bench-steady): leader changes over ``--minutes`` of trader load are counted from the
        servers' logs: every ``leader is now this server`` line after the warm-up is one (a
        leader that stepped down and was elected again counts too); lines where a server saw no
        live leader (``server None``) are counted apart; the traders' side (the answering server
        switching) is printed as a cross-check. Verdict: 0 changes, at most 1 with hogs.
Rule 5: ``--cpu-hogs`` starts one busy-loop process per CPU, at the same nice as the servers and
        traders (the machine made busy for them, not behind them), and kills them at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from exchange.bench import raise_priority
from exchange.cluster import ClusterError, LocalCluster
from traders.load import ACKED, REJECTED, LoadConfig, LoadRun, Sample
from traders.workload import DEFAULT_SYMBOLS

PAUSES_DEFAULT = 20
TRADERS_DEFAULT = 4
TARGET_FAILOVER_P50_MS = 10.0  # issue 14: FIFO p on the leader, first answer from the new one
STEADY_S = 0.5  # load before each pause
ANSWER_WAIT_S = 10.0  # no answer from another server this long after a pause: the round aborts
ANSWER_GATHER_S = 0.05  # after the first answer is seen, other traders' earlier ones may land
POLL_S = 0.001
REJOIN_TIMEOUT_S = 30.0
LEADER_TIMEOUT_S = 15.0
LOAD_TEST_MS_MAX = 24 * 3600 * 1000  # the load runs until stopped; this only bounds it
STEADY_MINUTES_DEFAULT = 10.0
STEADY_WARMUP_S = 2.0  # leader changes before this (start-up) are not counted
STEADY_REPORT_S = 30.0  # progress line period
TARGET_STEADY_CHANGES = 0
TARGET_STEADY_CHANGES_HOGS = 1
HOG_CODE = "while True: pass"
LEADER_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) .*server (\d+): leader is now "
                         r"(this server|server \w+)$", re.MULTILINE)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    failover = commands.add_parser(
        "bench-failover", help="FIFO p on the leader under trader load: time to the first "
        "answer from the new leader",
        description="Start 3 servers and traders (closed loop, or --rate); --pauses times, "
        "pause the leader silently through its control FIFO (p; --step: s, the cooperative "
        "hand-off), time from the pause to the first order a trader got answered by the new "
        "leader, resume the old leader (r) and let it rejoin. Prints p50/p90/p99/max and a "
        f"verdict against {TARGET_FAILOVER_P50_MS:g} ms (issue 14).")
    failover.add_argument("--pauses", type=int, default=PAUSES_DEFAULT,
                          help=f"fail-overs to measure (default {PAUSES_DEFAULT})")
    how = failover.add_mutually_exclusive_group()
    how.add_argument("--step", action="store_true",
                     help="write s (step down, then pause) instead of the silent p")
    how.add_argument("--sigstop", action="store_true",
                     help="SIGSTOP the leader's process instead (a crash or a stuck machine: it "
                     "answers nothing, not even its requests in flight), SIGCONT to resume")
    _common(failover)
    steady = commands.add_parser(
        "bench-steady", help="fault-free trader load: count leader changes (--cpu-hogs)",
        description="Start 3 servers and traders (closed loop, or --rate) for --minutes with "
        "no fault and count leader changes from the servers' logs; --cpu-hogs also runs one "
        f"busy loop per CPU. Verdict: {TARGET_STEADY_CHANGES} changes, at most "
        f"{TARGET_STEADY_CHANGES_HOGS} with hogs (issue 14).")
    steady.add_argument("--minutes", type=float, default=STEADY_MINUTES_DEFAULT,
                        help=f"length of the load (default {STEADY_MINUTES_DEFAULT:g}; "
                        "fractions allowed, e.g. 0.3)")
    steady.add_argument("--cpu-hogs", action="store_true",
                        help="one busy-loop process per CPU for the whole run")
    _common(steady)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--traders", type=int, default=TRADERS_DEFAULT,
                        help=f"traders (default {TRADERS_DEFAULT})")
    parser.add_argument("--rate", type=float, default=0.0, metavar="ORDERS_PER_S",
                        help="open loop: this many orders a second over all traders (default "
                        "0: closed loop, each trader sends its next order when answered, which "
                        "keeps the servers saturated on 2 cores)")
    parser.add_argument("--stream", action="store_true",
                        help="each trader uses one OrderSession stream (closed loop, one order "
                        "per message) instead of unary calls")
    parser.add_argument("--seed", type=int, default=14, help="traders' workload seed")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG to every server (repeat it), e.g. "
                        "--server-arg=--dead-after-us=20000")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the servers' logs (their directory is printed)")


def run(args: argparse.Namespace) -> int:
    steady = args.command == "bench-steady"
    name = f"python -m exchange {args.command}"
    if (args.traders < 1 or args.rate < 0 or (not steady and args.pauses < 1)
            or (steady and args.minutes <= 0)):
        print(f"{name}: error: need --traders >= 1, --rate >= 0 and --pauses >= 1 / "
              "--minutes > 0", file=sys.stderr)
        return 2
    if args.stream and args.rate:
        print(f"{name}: error: --stream runs closed loop; drop --rate", file=sys.stderr)
        return 2
    raise_priority()
    print(f"{args.command}: traders and servers at nice {os.getpriority(os.PRIO_PROCESS, 0)} "
          f"(MU_BENCH_NICE, default -10; 0 leaves it); load average {_load_average()}",
          flush=True)
    cluster = LocalCluster(3, name=args.command, extra_args=tuple(args.server_arg))
    try:
        with _hogs(steady and args.cpu_hogs) as hogs:
            if hogs:
                print(f"{args.command}: {len(hogs)} CPU hogs running (pids "
                      f"{', '.join(str(p.pid) for p in hogs)})", flush=True)
            cluster.start()
            return _steady(cluster, args) if steady else _failovers(cluster, args)
    except ClusterError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        cluster.stop(keep_logs=args.keep_logs)
        if args.keep_logs:
            print(f"{args.command}: server logs in {cluster.workdir}")


@contextlib.contextmanager
def _hogs(wanted: bool) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Rule 5: one busy loop per CPU (inheriting this process's nice), killed on exit."""
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        if wanted:
            for _ in range(os.cpu_count() or 1):
                hogs.append(subprocess.Popen([sys.executable, "-c", HOG_CODE],
                                             stdin=subprocess.DEVNULL, start_new_session=True))
        yield hogs
    finally:
        for hog in hogs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hog.pid, signal.SIGKILL)
            hog.wait()


def _load_words(args: argparse.Namespace) -> str:
    if args.rate:
        return f"{args.traders} traders at {args.rate:g} orders/s in all (open loop)"
    return f"{args.traders} closed-loop traders{' (order sessions)' if args.stream else ''}"


def _load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def _start_load(cluster: LocalCluster, args: argparse.Namespace) -> LoadRun:
    load = LoadRun(LoadConfig(tuple(cluster.addresses.values()), args.traders, args.rate,
                              LOAD_TEST_MS_MAX, args.seed, DEFAULT_SYMBOLS,
                              stream=args.stream))
    load.start()
    return load


# --- bench-failover -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Round:
    old_leader: int
    new_leader: int
    answer_ms: float  # pause -> first answer from another server, as a trader saw it (Rule 2)
    elected_ms: float | None  # pause -> the new leader's own log line (Rule 3)


def _failovers(cluster: LocalCluster, args: argparse.Namespace) -> int:
    load = _start_load(cluster, args)
    rounds: list[Round] = []
    aborted = 0
    paused: int | None = None
    try:
        for number in range(1, args.pauses + 1):
            leader = _settle(cluster, paused)
            time.sleep(STEADY_S)
            paused = leader
            pid = cluster.servers[leader].process.pid
            stop = (functools.partial(os.kill, pid, signal.SIGSTOP) if args.sigstop else
                    functools.partial(cluster.control, leader, "s" if args.step else "p"))
            try:
                result = _one_round(cluster, load, leader, stop)
            except TimeoutError as exc:
                aborted += 1
                print(f"round {number}: {exc}", flush=True)
                continue
            finally:
                if args.sigstop:
                    os.kill(pid, signal.SIGCONT)
                else:
                    cluster.control(leader, "r")
            rounds.append(result)
            elected = "?" if result.elected_ms is None else f"{result.elected_ms:.1f}"
            print(f"round {number}: leader {result.old_leader} paused -> first answer from "
                  f"server {result.new_leader} after {result.answer_ms:.2f} ms (its leader "
                  f"line at {elected} ms)", flush=True)
        _settle(cluster, paused)
    finally:
        load.close()
    return _failover_summary(rounds, aborted, load, args)


def _settle(cluster: LocalCluster, paused: int | None) -> int:
    """Rule 2: the previously paused server caught up, every server names one leader."""
    if paused is not None:
        cluster.wait_caught_up(paused, REJOIN_TIMEOUT_S)
    return cluster.wait_for_leader(LEADER_TIMEOUT_S)


def _one_round(cluster: LocalCluster, load: LoadRun, leader: int,
               stop: Callable[[], None]) -> Round:
    """Pause ``leader`` (``stop``: its FIFO, or SIGSTOP); the time to the first answer from
    another server."""
    old_address = cluster.addresses[leader]
    cursors: list[int] = []
    load.samples_since(cursors)  # only answers after the pause count
    wall_at_pause = time.time()
    paused_ns = time.monotonic_ns()
    stop()
    answers: list[Sample] = []
    deadline = time.monotonic() + ANSWER_WAIT_S
    gather_until = None
    while gather_until is None or time.monotonic() < gather_until:
        answers += [s for s in load.samples_since(cursors)
                    if s.end_ns >= paused_ns and s.outcome in (ACKED, REJECTED)
                    and s.replica and s.replica != old_address]
        if answers and gather_until is None:
            gather_until = time.monotonic() + ANSWER_GATHER_S
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from another server within {ANSWER_WAIT_S:g} s of "
                               f"pausing server {leader}")
        time.sleep(POLL_S)
    first = min(answers, key=lambda s: s.end_ns)
    new_leader = next(i for i, a in cluster.addresses.items() if a == first.replica)
    elected = _leader_line_after(cluster.servers[new_leader].log_path, wall_at_pause)
    return Round(leader, new_leader, (first.end_ns - paused_ns) / 1e6,
                 None if elected is None else elected * 1000)


def _seconds_of_day(wall: float) -> float:
    stamp = time.localtime(wall)
    return stamp.tm_hour * 3600 + stamp.tm_min * 60 + stamp.tm_sec + wall % 1


def _leader_line_after(log_path: Path, wall_at_pause: float) -> float | None:
    """Rule 3: seconds from ``wall_at_pause`` to the server's first "leader is now this server"
    line after it (its log stamps are local time of day, in ms), or None."""
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    start = _seconds_of_day(wall_at_pause)
    for match in LEADER_LINE.finditer(text):
        if match.group(6) != "this server":
            continue
        hours, minutes, seconds, millis = (int(match.group(i)) for i in range(1, 5))
        at = hours * 3600 + minutes * 60 + seconds + millis / 1000
        delta = (at - start + 43_200) % 86_400 - 43_200  # midnight-safe difference
        if -0.001 <= delta < ANSWER_WAIT_S:
            return max(delta, 0.0)
    return None


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _failover_summary(rounds: list[Round], aborted: int, load: LoadRun,
                      args: argparse.Namespace) -> int:
    kind = ("SIGSTOP" if args.sigstop else "FIFO s (step down)" if args.step
            else "FIFO p (silent)")
    print(f"\n== {kind} on the leader, {_load_words(args)}: pause -> first "
          f"answer from the new leader seen by a trader")
    if not rounds:
        print(f"no fail-over completed ({aborted} aborted)")
        return 1
    answers = [r.answer_ms for r in rounds]
    p50 = _percentile(answers, 0.5)
    print(f"{len(rounds)} fail-overs: p50 {p50:.2f} ms, p90 {_percentile(answers, 0.9):.2f} ms, "
          f"p99 {_percentile(answers, 0.99):.2f} ms, max {max(answers):.2f} ms "
          f"(mean {statistics.mean(answers):.2f}); aborted {aborted}")
    elected = [r.elected_ms for r in rounds if r.elected_ms is not None]
    if elected:
        print(f"servers' view, pause -> the new leader's 'leader is now this server' line (ms "
              f"resolution): p50 {_percentile(elected, 0.5):.1f} ms, max {max(elected):.1f} ms "
              f"({len(elected)} of {len(rounds)} found)")
    report = load.report()
    print(f"traders: {report.counts.get('acked', 0) + report.counts.get('rejected', 0):,} "
          f"answers, {report.counts.get('failed', 0)} failed, latency {report.latency().line()}")
    print(f"load average now {_load_average()}")
    met = p50 <= TARGET_FAILOVER_P50_MS and not aborted
    print(f"verdict: p50 {p50:.2f} ms <= {TARGET_FAILOVER_P50_MS:g} ms: "
          f"{'met' if met else 'NOT met'}")
    return 0 if met else 1


# --- bench-steady -------------------------------------------------------------------------------
def count_leader_lines(cluster: LocalCluster) -> tuple[int, int]:
    """Rule 4: (times a server became leader, times a server saw no live leader) in the logs."""
    elected = gaps = 0
    for server in cluster.servers.values():
        text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        for match in LEADER_LINE.finditer(text):
            if match.group(6) == "this server":
                elected += 1
            elif match.group(6) == "server None":
                gaps += 1
    return elected, gaps


def answering_switches(samples: list[Sample]) -> int:
    """Rule 4's cross-check: how often the server answering the traders changed."""
    answered = sorted((s.end_ns, s.replica) for s in samples
                      if s.outcome in (ACKED, REJECTED) and s.replica)
    return sum(1 for (_, a), (_, b) in zip(answered, answered[1:], strict=False) if a != b)


def _steady(cluster: LocalCluster, args: argparse.Namespace) -> int:
    load = _start_load(cluster, args)
    try:
        time.sleep(STEADY_WARMUP_S)
        elected0, gaps0 = count_leader_lines(cluster)
        started = time.monotonic()
        started_ns = time.monotonic_ns()
        end = started + args.minutes * 60
        while time.monotonic() < end:
            time.sleep(min(STEADY_REPORT_S, max(0.0, end - time.monotonic())))
            elected, gaps = count_leader_lines(cluster)
            print(f"{(time.monotonic() - started) / 60:5.1f} min: {elected - elected0} leader "
                  f"changes, {gaps - gaps0} moments without a leader in a server's view; "
                  f"{load.answered:,} answers; load average {_load_average()}", flush=True)
        elected, gaps = count_leader_lines(cluster)
    finally:
        load.close()
    report = load.report()
    measured = [s for s in report.samples if s.end_ns >= started_ns]
    changes = elected - elected0
    target = TARGET_STEADY_CHANGES_HOGS if args.cpu_hogs else TARGET_STEADY_CHANGES
    hogs = f", {os.cpu_count()} CPU hogs" if args.cpu_hogs else ""
    print(f"\n== {args.minutes:g} min of {_load_words(args)}, no faults{hogs}")
    print(f"leader changes (servers' logs): {changes}; moments a server saw no live leader: "
          f"{gaps - gaps0}; answering server switched {answering_switches(measured)} times "
          f"(traders' view)")
    print(f"traders: {len(measured):,} requests, {report.counts.get('failed', 0)} failed, "
          f"latency {report.latency(started_ns).line()}; load average {_load_average()}")
    met = changes <= target
    print(f"verdict: {changes} leader changes <= {target}: {'met' if met else 'NOT met'}")
    return 0 if met else 1
