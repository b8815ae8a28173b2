"""Real-process fault injection (Jepsen-style) on the ``shm`` fabric, and the history check.

``python -m consensus.sim.proc_nemesis --seconds 600`` (a soak; CI runs about 20 s)

Rule 1: three replica processes (``consensus.sim.proc_node``) run under a steady stream of
        proposals; one fault at a time: SIGSTOP/SIGCONT a follower or the leader (a silent
        leader; one stopped inside a log write makes that follower move its log to a new file,
        as the ``shm`` fabric's module says), SIGKILL a follower and restart it with
        ``--reattach``, or pause the leader through its pause hook and resume it. The choices
        come from ``--seed``; the timing is real, so a run is not replayable.
Rule 2: after the faults every replica is brought back and given ``CATCHUP_S`` to deliver
        everything acknowledged; then the journals are checked with the simulator's
        ``HistoryChecker``: agreement, durability of acknowledged entries, each incarnation a
        gap-free prefix, no payload delivered at two indexes (nothing unacknowledged twice), no
        invented payloads, and every live replica delivered every acknowledged index.
Rule 3: the run cleans up after itself whatever happens: every child is killed and waited for,
        and the cluster's shared-memory objects are removed (``consensus.fabric.shm.cleanup``).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consensus.sim.checkers import Violation
from consensus.sim.history import check_journals, journal_files

MEMBERS = (1, 2, 3)
FAULT_S_MIN, FAULT_S_MAX = 0.05, 0.4  # how long one fault lasts
GAP_S_MIN, GAP_S_MAX = 0.05, 0.3  # fault-free time between two faults
STARTUP_S_MAX = 20.0  # until some replica is leader and an entry is acknowledged
CATCHUP_S = 15.0
QUIT_S = 5.0  # a replica process must exit this long after "quit"
SETTLE_S = 1.0  # after "hold": longer than a proposal's timeout, so every ack is journalled
POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class Status:
    leader: bool
    applied: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class NemesisReport:
    violations: tuple[Violation, ...]
    faults: tuple[tuple[str, int], ...]
    proposed: int
    acked: int
    delivered: int
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.violations


def read_status(directory: Path, replica: int) -> Status | None:
    try:
        fields = dict(
            part.split("=", 1) for part in (directory / f"status-{replica}.txt").read_text().split()
        )
        return Status(fields["leader"] == "1", int(fields["applied"]), int(fields["incarnation"]))
    except (OSError, KeyError, ValueError):
        return None


class Cluster:
    """The replica processes of one run and their control pipes."""

    def __init__(self, directory: Path, cluster_id: str, payload_bytes: int, rate: float) -> None:
        self.directory = directory
        self.cluster_id = cluster_id
        self.payload_bytes = payload_bytes
        self.rate = rate
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.incarnations: dict[int, int] = {}
        self.stopped: set[int] = set()

    def launch(self, replica: int, reattach: bool) -> None:
        incarnation = self.incarnations.get(replica, 0) + 1
        self.incarnations[replica] = incarnation
        command = [
            sys.executable, "-m", "consensus.sim.proc_node", "--id", str(replica),
            "--members", ",".join(map(str, MEMBERS)), "--cluster", self.cluster_id,
            "--dir", str(self.directory), "--incarnation", str(incarnation),
            "--payload-bytes", str(self.payload_bytes), "--rate", str(self.rate),
        ] + (["--reattach"] if reattach else [])
        stderr = open(self.directory / f"stderr-{replica}-{incarnation}.txt", "wb")  # noqa: SIM115
        self.procs[replica] = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=stderr, stderr=stderr
        )
        stderr.close()

    def send(self, replica: int, command: str) -> None:
        stdin = self.procs[replica].stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()

    def signal(self, replica: int, signum: int) -> None:
        os.kill(self.procs[replica].pid, signum)
        if signum == signal.SIGSTOP:
            self.stopped.add(replica)
        elif signum == signal.SIGCONT:
            self.stopped.discard(replica)

    def kill(self, replica: int) -> None:
        proc = self.procs[replica]
        proc.kill()
        proc.wait()
        self.stopped.discard(replica)

    def status(self, replica: int) -> Status | None:
        status = read_status(self.directory, replica)
        if status is None or status.incarnation != self.incarnations[replica]:
            return None
        return status

    def leader(self) -> int | None:
        for replica in MEMBERS:
            status = self.status(replica)
            if status is not None and status.leader and replica not in self.stopped:
                return replica
        return None

    def exited(self) -> list[int]:
        return [r for r, p in self.procs.items() if p.poll() is not None]

    def quit_all(self) -> None:
        for replica in list(self.procs):
            if replica in self.stopped:
                self.signal(replica, signal.SIGCONT)
            try:
                self.send(replica, "quit")
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + QUIT_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass


class Nemesis:
    """One fault at a time against ``cluster`` until the deadline (Rule 1)."""

    def __init__(self, cluster: Cluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.counts: Counter[str] = Counter()

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(GAP_S_MIN, GAP_S_MAX))
            leader = self.cluster.leader()
            if leader is None:
                continue
            followers = [r for r in MEMBERS if r != leader]
            victim = self.rng.choice(followers)
            kind = self.rng.choice(("sigstop", "kill", "pause-leader", "sigstop-leader"))
            hold_s = self.rng.uniform(FAULT_S_MIN, FAULT_S_MAX)
            if kind in ("sigstop", "sigstop-leader"):
                stopped = victim if kind == "sigstop" else leader
                self.cluster.signal(stopped, signal.SIGSTOP)
                time.sleep(hold_s)
                self.cluster.signal(stopped, signal.SIGCONT)
            elif kind == "kill":
                self.cluster.kill(victim)
                time.sleep(hold_s)
                self.cluster.launch(victim, reattach=True)
            else:
                self.cluster.send(leader, "pause")
                time.sleep(hold_s)
                self.cluster.send(leader, "resume")
            self.counts[kind] += 1


def wait_until(predicate: object, timeout_s: float) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(POLL_S)
    return bool(predicate())


def acked_upto(directory: Path) -> int:
    best = 0
    for _, _, path in journal_files(directory, "acked"):
        lines = path.read_text().splitlines()
        for line in lines[-50:]:
            try:
                best = max(best, int(line.split(" ")[0]))
            except ValueError:
                pass
    return best


def run_nemesis(
    seconds: float, seed: int, directory: Path, payload_bytes: int = 32, rate: float = 2000.0
) -> NemesisReport:
    """Start a cluster, inject faults for ``seconds``, heal, check the history, clean up."""
    from consensus.fabric.shm import cleanup

    cluster_id = f"nemesis-{os.getpid()}-{seed}"
    cleanup(cluster_id)
    cluster = Cluster(directory, cluster_id, payload_bytes, rate)
    nemesis = Nemesis(cluster, random.Random(seed))
    started = time.monotonic()
    try:
        for replica in MEMBERS:
            cluster.launch(replica, reattach=False)
        if not wait_until(lambda: acked_upto(directory) > 0, STARTUP_S_MAX):
            raise RuntimeError(f"no proposal acknowledged within {STARTUP_S_MAX:.0f} s of start; "
                               f"see {directory}/stderr-*.txt")
        nemesis.run(seconds)
        for replica in MEMBERS:
            cluster.send(replica, "hold")
        time.sleep(SETTLE_S)
        target = acked_upto(directory)

        def caught_up() -> bool:
            statuses = [cluster.status(r) for r in MEMBERS]
            return all(s is not None and s.applied >= target for s in statuses)

        wait_until(caught_up, CATCHUP_S)
        dead = cluster.exited()
        cluster.quit_all()
    finally:
        cluster.kill_all()
        cleanup(cluster_id)
    live = {r: cluster.incarnations[r] for r in MEMBERS if r not in dead}
    summary = check_journals(directory, live)
    violations = list(summary.violations)
    violations += [Violation("crash", f"replica {r} exited on its own; see "
                             f"{directory}/stderr-{r}-{cluster.incarnations[r]}.txt")
                   for r in dead]
    return NemesisReport(
        tuple(violations),
        tuple(sorted(nemesis.counts.items())),
        summary.proposed,
        summary.acked,
        summary.delivered,
        time.monotonic() - started,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consensus.sim.proc_nemesis",
        description="Jepsen-style test on real processes: a 3-replica cluster on the shm fabric "
        "under a steady stream of proposals, a nemesis that SIGSTOPs followers and the leader, "
        "kills and restarts followers and pauses the leader, then a check of the whole history.",
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="fault phase (default 20)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the nemesis' choices")
    parser.add_argument("--dir", help="keep the journals here (default: a temporary directory)")
    parser.add_argument("--rate", type=float, default=2000.0, help="proposals/s at most")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mu-nemesis-") as scratch:
        directory = Path(args.dir) if args.dir else Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        try:
            report = run_nemesis(args.seconds, args.seed, directory, rate=args.rate)
        except RuntimeError as error:
            print(f"proc_nemesis: {error}", file=sys.stderr)
            return 2
        faults = " ".join(f"{k}={v}" for k, v in report.faults) or "none"
        print(f"{report.seconds:.1f} s: proposed={report.proposed} acked={report.acked} "
              f"delivered={report.delivered} faults: {faults}")
        for violation in report.violations[:40]:
            print(f"VIOLATION {violation}")
        print("history OK" if report.ok else f"{len(report.violations)} violation(s); "
              f"journals in {directory if args.dir else '(temporary; pass --dir to keep)'}")
        return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
