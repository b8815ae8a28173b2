"""One replica as an OS process, for the real-process nemesis (``consensus.sim.proc_nemesis``).

``python -m consensus.sim.proc_node --id 2 --members 1,2,3 --cluster C --dir D [--reattach]``

Rule 1: the replica is the production ``consensus.Replica`` on the ``shm`` fabric with the real
        runtime; this module only adds a client and a journal around it.
Rule 2: the journal is append-only files in ``--dir``, one line per event, each written with a
        single ``os.write`` on an ``O_APPEND`` descriptor, so a line is in the kernel's page cache
        the moment the call returns and survives SIGKILL whole:
        ``proposed-<id>-<inc>.log`` (payload, before ``propose`` is called),
        ``acked-<id>-<inc>.log`` (index and payload, after ``propose`` returned),
        ``delivered-<id>-<inc>.log`` (index and payload, from ``on_commit``).
Rule 3: every payload is unique: ``<id>.<incarnation>.<counter>``, padded to ``--payload-bytes``.
Rule 4: ``status-<id>.txt`` is replaced atomically every ``STATUS_INTERVAL_S`` with
        ``leader=<0|1> applied=<index> paused=<0|1> incarnation=<n>``.
Rule 5: stdin carries control lines: ``pause``, ``resume`` (the replica's pause hook), ``hold``
        (the client stops proposing, so the history can settle) and ``quit`` (clean shutdown);
        end of input also quits.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from consensus.bench import tune_process
from consensus.errors import ConsensusError
from consensus.fabric import FabricError, open_fabric
from consensus.registry import RegistryError, open_registry
from consensus.runtime import RealRuntime
from consensus.sim.protocol import ReplicaLike, ReplicaSpec, mu_protocol

STATUS_INTERVAL_S = 0.02
PROPOSE_TIMEOUT_S = 0.5
NOT_LEADER_BACKOFF_S = 0.002
LOG_SLOTS = 65536  # 32 s of history at 2000 proposals/s: a restarted replica never overruns


class Journal:
    """Append-only event files of one incarnation (Rule 2)."""

    def __init__(self, directory: Path, replica_id: int, incarnation: int) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        self.directory = directory
        self.replica_id = replica_id
        self._fds = {
            kind: os.open(directory / f"{kind}-{replica_id}-{incarnation}.log", flags, 0o644)
            for kind in ("proposed", "acked", "delivered")
        }

    def proposed(self, payload: bytes) -> None:
        os.write(self._fds["proposed"], payload.hex().encode() + b"\n")

    def acked(self, index: int, payload: bytes) -> None:
        os.write(self._fds["acked"], b"%d %s\n" % (index, payload.hex().encode()))

    def delivered(self, index: int, payload: bytes) -> None:
        os.write(self._fds["delivered"], b"%d %s\n" % (index, bytes(payload).hex().encode()))

    def status(self, text: str) -> None:
        final = self.directory / f"status-{self.replica_id}.txt"
        temporary = final.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(final)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.journal = Journal(Path(args.dir), args.id, args.incarnation)
        self.stopping = threading.Event()
        self.paused = False
        self.holding = False
        self.applied = 0
        self.counter = 0
        protocol = mu_protocol(simulated=False)
        self.expected = protocol.expected_errors
        registry = open_registry(args.cluster)
        fabric = open_fabric("shm", args.id, args.cluster, registry, reattach=args.reattach)
        members = tuple(args.members)
        spec = ReplicaSpec(args.id, members, args.payload_bytes, LOG_SLOTS, args.reattach)
        self.replica: ReplicaLike = protocol.build(
            spec, fabric, registry, RealRuntime(), self.on_commit, lambda leader, me: None
        )

    def on_commit(self, index: int, payload: bytes) -> None:
        self.journal.delivered(index, payload)
        self.applied = index

    def payload(self) -> bytes:
        self.counter += 1
        text = f"{self.args.id}.{self.args.incarnation}.{self.counter}".encode()
        return text.ljust(self.args.payload_bytes, b"-")

    def propose_forever(self) -> None:
        pause_s = 1.0 / self.args.rate
        while not self.stopping.is_set():
            if self.paused or self.holding or not self.replica.is_leader:
                time.sleep(NOT_LEADER_BACKOFF_S)
                continue
            payload = self.payload()
            self.journal.proposed(payload)
            try:
                index = self.replica.propose(payload, PROPOSE_TIMEOUT_S)
            except self.expected:
                time.sleep(NOT_LEADER_BACKOFF_S)
                continue
            self.journal.acked(index, payload)
            time.sleep(pause_s)

    def report_status(self) -> None:
        while not self.stopping.wait(STATUS_INTERVAL_S):
            leader = int(self.replica.is_leader and not self.paused)
            self.journal.status(
                f"leader={leader} applied={self.applied} paused={int(self.paused)} "
                f"incarnation={self.args.incarnation}\n"
            )

    def serve(self) -> None:
        self.replica.start()
        threads = [
            threading.Thread(target=self.propose_forever, name="proposer", daemon=True),
            threading.Thread(target=self.report_status, name="status", daemon=True),
        ]
        for thread in threads:
            thread.start()
        for line in sys.stdin:
            command = line.strip()
            if command == "pause":
                self.paused = True
                self.replica.pause()
            elif command == "resume":
                self.replica.resume()
                self.paused = False
            elif command == "hold":
                self.holding = True
            elif command == "quit":
                break
            elif command:
                print(f"proc_node {self.args.id}: unknown command {command!r}", file=sys.stderr)
        self.stopping.set()
        for thread in threads:
            thread.join()
        self.replica.stop()
        self.journal.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consensus.sim.proc_node",
        description="One replica process of the real-process nemesis test (driven by "
        "consensus.sim.proc_nemesis; control lines on stdin: pause, resume, quit).",
    )
    parser.add_argument("--id", type=int, required=True, help="this replica's id")
    parser.add_argument(
        "--members", required=True, type=lambda s: [int(x) for x in s.split(",")],
        help="comma-separated member ids, e.g. 1,2,3",
    )
    parser.add_argument("--cluster", required=True, help="cluster id (names the shm objects)")
    parser.add_argument("--dir", required=True, help="directory for the journal files")
    parser.add_argument("--incarnation", type=int, default=1, help="restart count + 1")
    parser.add_argument("--reattach", action="store_true", help="re-attach surviving regions")
    parser.add_argument("--payload-bytes", type=int, default=32, help="payload size (>= 24)")
    parser.add_argument("--rate", type=float, default=2000.0, help="proposals/s at most")
    args = parser.parse_args(argv)
    if args.id not in args.members:
        parser.error(f"--id {args.id} is not among --members {args.members}")
    if args.payload_bytes < 24 or args.rate <= 0:
        parser.error("--payload-bytes must be >= 24 and --rate positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tune_process()  # the benchmarks' GIL switch interval and GC settings
    try:
        node = Node(args)
    except (FabricError, RegistryError, ConsensusError, ValueError) as error:
        print(f"proc_node {args.id}: cannot start: {error}", file=sys.stderr)
        return 2
    node.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
