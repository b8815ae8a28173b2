"""Local clusters for the benchmarks: ``--local N`` spawning, and the fail-over benchmark.

Rule 1: a local cluster gets a fresh cluster id, one child process per replica, and is cleaned up
        (children killed, shared memory and registry entries removed) on every exit path.
Rule 2 (failover): every node proposes steadily while it leads and reports events on stdout
        (``EV <kind> <replica> <monotonic ns> ...``); the driver pauses the current leader through
        the pause hook (a line on the node's stdin), measures pause -> first commit by the new
        leader (CLOCK_MONOTONIC is shared by processes), resumes the old leader, lets it rejoin,
        and repeats. ``--pauses 0 --duration S`` is the fault-free run: it counts leader changes.
Rule 3 (failover): three kinds of fault. ``pause`` is silent (the node stops beating and serving
        without clearing its ``leading`` word, as Mu's ``p``), ``step`` steps aside first
        (cooperative), ``sigstop`` stops the whole process. Without ``--sigstop`` the benchmark
        runs ``--pauses`` of each of ``pause`` and ``step`` and reports both.
Rule 4 (failover): nodes also report the election's milestones (``Replica(on_phase=...)``):
        a peer judged the leader dead (suspect), the new leader campaigns, holds a majority's
        permissions, finished prepare; the report splits every fail-over into detect, to
        campaign, permissions, prepare and first commit, with per-phase p50/p90/max and the
        slowest fail-overs phase by phase.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from consensus.bench import LEADER_WAIT_S, percentile, raise_priority, tune_process
from consensus.config import ReplicaConfig
from consensus.errors import ConsensusError
from consensus.replica import Replica

CHILD_EXIT_WAIT_S = 10.0
STEADY_BEFORE_PAUSE_S = 0.2  # leader runs this long before it is paused
REJOIN_WAIT_S = 0.2  # the resumed replica gets this long to rejoin before the next pause
FAILOVER_WAIT_S = 5.0  # a fail-over slower than this is reported as a failure
NODE_IDLE_SLEEP_S = 0.0002


def new_cluster_id(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{int(time.time() * 1000) % 1_000_000}"


def cleanup_cluster(cluster: str) -> None:
    from consensus.fabric.shm import cleanup

    cleanup(cluster)


def _exit_on_sigterm() -> None:
    """Turn SIGTERM (``timeout``, ``kill``) into SystemExit so the cleanup in ``finally`` runs."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def spawn_local(
    argv_for: list[list[str]], cluster: str, pipes: bool
) -> list[subprocess.Popen[str]]:
    _exit_on_sigterm()
    env = dict(os.environ, MU_BENCH_CLUSTER=cluster)
    env.pop("DORY_REGISTRY_IP", None)
    return [
        subprocess.Popen([sys.executable, "-m", "consensus", *argv], env=env, text=True,
                         stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                         stdout=subprocess.PIPE if pipes else None)
        for argv in argv_for
    ]


def reap(children: list[subprocess.Popen[str]], cluster: str) -> None:
    for child in children:
        if child.poll() is None and child.returncode is None:
            try:
                child.send_signal(signal.SIGCONT)  # a SIGSTOPped child cannot exit otherwise
            except ProcessLookupError:
                pass
        if child.poll() is None:
            try:
                child.wait(CHILD_EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    cleanup_cluster(cluster)


def run_local_st(argv_for: list[list[str]], cluster: str) -> int:
    """Rule 1 for st/st-lat: children share this terminal; exit status is the worst child's."""
    children = spawn_local(argv_for, cluster, pipes=False)
    try:
        return max(child.wait() for child in children)
    except (KeyboardInterrupt, SystemExit):
        for child in children:
            child.terminate()
        return 130
    finally:
        reap(children, cluster)


# --- fail-over node ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class NodeOptions:
    replica_id: int
    members: tuple[int, ...]
    cluster: str
    payload_size: int
    interval_us: int
    dead_after_us: int
    record: str | None = None  # write "index payload-hex" per delivered entry here at exit


def emit(*fields: object) -> None:
    sys.stdout.write("EV " + " ".join(str(f) for f in fields) + "\n")
    sys.stdout.flush()


def run_node(opts: NodeOptions) -> int:
    """One replica of the fail-over benchmark (Rule 2)."""
    from consensus.fabric import open_fabric
    from consensus.registry import open_registry

    raise_priority()
    registry = open_registry(opts.cluster)
    fabric = open_fabric("shm", opts.replica_id, opts.cluster, registry)
    config = ReplicaConfig(opts.replica_id, opts.members, payload_size_max=opts.payload_size,
                           dead_after_us=opts.dead_after_us)
    me = opts.replica_id
    delivered: list[tuple[int, bytes]] = []
    replica = Replica(config, fabric, registry,
                      on_commit=(lambda index, payload: delivered.append((index, payload)))
                      if opts.record else None,
                      on_leader_change=lambda leader, mine: emit("leader", me,
                                                                 time.monotonic_ns(), leader),
                      on_phase=lambda phase, now_ns: emit(phase, me, now_ns))
    commands: queue.SimpleQueue[str] = queue.SimpleQueue()

    def read_commands() -> None:
        for line in sys.stdin:
            commands.put(line.strip())
        commands.put("quit")

    threading.Thread(target=read_commands, daemon=True).start()
    replica.start()
    tune_process()
    try:
        _node_loop(replica, opts, commands)
    finally:
        replica.stop()
        fabric.close()
        if opts.record:
            with open(opts.record, "w") as out:
                out.writelines(f"{index} {payload.hex()}\n" for index, payload in delivered)
    return 0


def _node_loop(replica: Replica, opts: NodeOptions, commands: queue.SimpleQueue[str]) -> None:
    me = opts.replica_id
    interval_s = opts.interval_us / 1e6
    leading_since_commit = False
    sequence = 0
    while True:
        while not commands.empty():
            command = commands.get()
            if command == "quit":
                return
            if command in ("pause", "step"):
                now = time.monotonic_ns()
                replica.pause(announce=command == "step")
                emit("paused", me, now)
            elif command == "resume":
                replica.resume()
                emit("resumed", me, time.monotonic_ns())
        if not replica.is_leader:
            leading_since_commit = False
            time.sleep(NODE_IDLE_SLEEP_S)
            continue
        sequence += 1
        payload = f"{me}:{sequence}".encode().ljust(opts.payload_size, b".")
        try:
            replica.propose(payload[: opts.payload_size])
        except ConsensusError:
            continue
        if not leading_since_commit:
            leading_since_commit = True
            emit("first-commit", me, time.monotonic_ns())
        if interval_s:
            time.sleep(interval_s)


# --- fail-over driver ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    replica: int
    time_ns: int


def _read_events(child: subprocess.Popen[str], events: queue.SimpleQueue[Event]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "EV":
            events.put(Event(fields[1], int(fields[2]), int(fields[3])))


def _events_within(events: queue.SimpleQueue[Event], timeout_s: float,
                   what: str, seen: list[Event] | None = None) -> Iterator[Event]:
    """Yield events as they come; raise TimeoutError("no <what> ...") once ``timeout_s`` passed
    (the caller stops iterating when it has what it waited for); the message lists ``seen``."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            got = ", ".join(f"{e.kind} of {e.replica}" for e in seen or ()) or "none"
            raise TimeoutError(f"no {what} within {timeout_s} s (events meanwhile: {got})")
        try:
            yield events.get(timeout=left)
        except queue.Empty:
            continue


def _next_event(events: queue.SimpleQueue[Event], kind: str, timeout_s: float,
                exclude: int | None = None, seen: list[Event] | None = None) -> Event:
    for event in _events_within(events, timeout_s, f"{kind!r} event"):
        if seen is not None:
            seen.append(event)
        if event.kind == kind and event.replica != exclude:
            return event
    raise AssertionError("unreachable: _events_within ends by raising")


def _send(child: subprocess.Popen[str], command: str) -> None:
    assert child.stdin is not None
    child.stdin.write(command + "\n")
    child.stdin.flush()


@dataclass(frozen=True, slots=True)
class FailoverOptions:
    pauses: int
    duration_s: float
    members: tuple[int, ...]
    payload_size: int
    interval_us: int
    dead_after_us: int
    sigstop: bool = False  # stop the leader's process (SIGSTOP) instead of the pause hook


def run_failover(opts: FailoverOptions) -> int:
    """Rule 2: spawn, drive, report; always clean up."""
    cluster = new_cluster_id("mu-failover")
    argv = [["bench", "failover-node", str(rid), "--cluster", cluster,
             "--members", ",".join(map(str, opts.members)), "--payload-size",
             str(opts.payload_size), "--interval-us", str(opts.interval_us),
             "--dead-after-us", str(opts.dead_after_us)] for rid in opts.members]
    children = spawn_local(argv, cluster, pipes=True)
    by_id = dict(zip(opts.members, children, strict=True))
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    for child in children:
        threading.Thread(target=_read_events, args=(child, events), daemon=True).start()
    try:
        leader = _next_event(events, "first-commit", LEADER_WAIT_S).replica
        print(f"failover: cluster {cluster} up, leader {leader}", file=sys.stderr)
        if opts.pauses == 0:
            return _steady(events, opts.duration_s)
        status = 0
        for how in ("sigstop",) if opts.sigstop else ("pause", "step"):  # Rule 3
            failed, leader = _pause_loop(events, by_id, leader, opts.pauses, how)
            status |= failed
        return status
    except TimeoutError as error:
        print(f"failover: {error}", file=sys.stderr)
        return 1
    finally:
        for child in children:
            try:
                _send(child, "quit")
            except (BrokenPipeError, OSError):
                pass
        reap(children, cluster)


def _steady(events: queue.SimpleQueue[Event], duration_s: float) -> int:
    from tqdm import tqdm

    seen: list[Event] = []
    end = time.monotonic() + duration_s
    with tqdm(total=int(duration_s), unit="s", file=sys.stderr, leave=False) as bar:
        while time.monotonic() < end:
            try:
                _next_event(events, "never", min(1.0, max(0.01, end - time.monotonic())),
                            seen=seen)
            except TimeoutError:
                pass
            bar.n = int(duration_s - max(0.0, end - time.monotonic()))
            bar.refresh()
    changes = sum(1 for e in seen if e.kind == "first-commit")
    print(f"fault-free run of {duration_s:.0f} s: {changes} leader changes")
    return 0 if changes == 0 else 1


def _pause_loop(events: queue.SimpleQueue[Event], by_id: dict[int, subprocess.Popen[str]],
                leader: int, pauses: int, how: str) -> tuple[int, int]:
    """Run ``pauses`` fail-overs of kind ``how``; return (exit status, the leader after)."""
    from tqdm import tqdm

    sigstop = how == "sigstop"
    failovers: list[FailoverTiming] = []
    unplanned = aborted = 0
    for _ in tqdm(range(pauses), unit="failover", file=sys.stderr, leave=False):
        time.sleep(STEADY_BEFORE_PAUSE_S)
        current = _drain_leader(events, leader)
        if current != leader:
            unplanned += 1
            leader = current
        try:
            failovers.append(_one_failover(events, by_id[leader], leader, how))
        except TimeoutError as error:
            aborted += 1  # the leader changed under us (a spurious change) or none emerged
            print(f"failover: round aborted after stopping replica {leader}: {error}",
                  file=sys.stderr)
        if sigstop:
            os.kill(by_id[leader].pid, signal.SIGCONT)
        else:
            _send(by_id[leader], "resume")
        time.sleep(REJOIN_WAIT_S)
        leader = _drain_leader(events, leader)
    if not failovers:
        print(f"failover: no {how} fail-over completed", file=sys.stderr)
        return 1, leader
    ordered = sorted(f.total_ns for f in failovers)
    p50, p99 = percentile(ordered, 0.5), percentile(ordered, 0.99)
    label = {"sigstop": "silent: SIGSTOP", "pause": "silent: pause hook",
             "step": "cooperative: step down"}[how]
    print(f"{pauses} fail-overs ({label} -> first commit by the new leader): "
          f"p50 {p50 / 1e6:.2f} ms, p99 {p99 / 1e6:.2f} ms, max {ordered[-1] / 1e6:.2f} ms; "
          f"unplanned leader changes between pauses: {unplanned}; aborted: {aborted}")
    for line in breakdown(failovers):
        print(f"  {line}")
    return 0, leader


PHASE_NAMES = ("detect", "to campaign", "permissions", "prepare", "first commit")
PHASE_EVENTS = ("suspect", "campaign", "granted", "leading")  # consensus.state.PHASES


def phase_durations(timing: FailoverTiming) -> tuple[int | None, ...]:
    """Rule 4: stop -> suspect -> campaign -> granted -> leading -> first commit, each in ns
    (None when a milestone is missing, e.g. a replica that was already campaigning)."""
    marks = (0, timing.suspect_ns, timing.campaign_ns, timing.granted_ns, timing.leading_ns,
             timing.total_ns)
    return tuple(None if a is None or b is None else b - a for a, b in pairwise(marks))


def breakdown(timings: list[FailoverTiming], slowest: int = 3) -> list[str]:
    """Rule 4: per-phase p50/p90/max over the fail-overs, then the slowest ones phase by
    phase, so the tail can be blamed on detection, election or the first commit."""
    assert timings
    per_phase = list(zip(*(phase_durations(t) for t in timings), strict=True))
    lines = []
    parts = []
    for name, values in zip(PHASE_NAMES, per_phase, strict=True):
        known = sorted(v for v in values if v is not None)
        if not known:
            parts.append(f"{name} n/a")
            continue
        parts.append(f"{name} {percentile(known, 0.5) / 1e6:.2f}/"
                     f"{percentile(known, 0.9) / 1e6:.2f}/{known[-1] / 1e6:.2f}")
    lines.append("phases, ms p50/p90/max: " + "; ".join(parts))
    for timing in sorted(timings, key=lambda t: -t.total_ns)[:slowest]:
        shown = ", ".join(f"{name} {'?' if d is None else f'{d / 1e6:.2f}'}"
                          for name, d in zip(PHASE_NAMES, phase_durations(timing), strict=True))
        lines.append(f"slow: {timing.total_ns / 1e6:.2f} ms = {shown}")
    return lines


@dataclass(frozen=True, slots=True)
class FailoverTiming:
    """One fail-over, in ns from the stop; a phase is None when its event was not seen
    (Rule 4)."""

    total_ns: int
    suspect_ns: int | None  # the new leader judges the old leader dead
    campaign_ns: int | None  # the new leader asks for permissions
    granted_ns: int | None  # ... has a majority's answers
    leading_ns: int | None  # ... finished prepare


def _timing(paused_ns: int, first: Event, seen: list[Event], leader: int) -> FailoverTiming:
    """Rule 4: the milestones of this fail-over among the events ``seen`` since the stop."""
    def when(kind: str, replica: int | None) -> int | None:
        times = [e.time_ns - paused_ns for e in seen
                 if e.kind == kind and e.time_ns >= paused_ns and e.replica != leader
                 and (replica is None or e.replica == replica)]
        return min(times) if times else None

    return FailoverTiming(first.time_ns - paused_ns, when("suspect", first.replica),
                          when("campaign", first.replica), when("granted", first.replica),
                          when("leading", first.replica))


def _one_failover(events: queue.SimpleQueue[Event], child: subprocess.Popen[str], leader: int,
                  how: str) -> FailoverTiming:
    """Stop ``leader``; return the time from the stop to the first commit of another replica,
    with its phases.

    The replicas' events reach ``events`` through one reader thread per process, so the new
    leader's first commit may be queued before the old leader's "paused": both are awaited in
    any order, and every other event is put back for ``_drain_leader``.
    """
    paused_ns: int | None = None
    if how == "sigstop":
        paused_ns = time.monotonic_ns()
        os.kill(child.pid, signal.SIGSTOP)
    else:
        _send(child, how)
    first: Event | None = None
    others: list[Event] = []
    try:
        for event in _events_within(events, FAILOVER_WAIT_S, "fail-over", others):
            if event.kind == "paused" and event.replica == leader and paused_ns is None:
                paused_ns = event.time_ns
            elif event.kind == "first-commit" and event.replica != leader and first is None:
                first = event
            else:
                others.append(event)
            if paused_ns is not None and first is not None:
                break
    finally:
        for event in others:
            events.put(event)
    assert paused_ns is not None and first is not None
    events.put(first)  # _drain_leader sees the new leader
    return _timing(paused_ns, first, others, leader)


def _drain_leader(events: queue.SimpleQueue[Event], leader: int) -> int:
    """The replica that most recently reported its first commit (events queued so far)."""
    while True:
        try:
            event = events.get_nowait()
        except queue.Empty:
            return leader
        if event.kind == "first-commit":
            leader = event.replica
