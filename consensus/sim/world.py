"""The simulated world: N replicas of the real protocol code on the simulated fabric, their clients,
the nemesis, and the checkers, driven by one seed.

Rule 1: the replicas run the production protocol code (``consensus.Replica`` by default, through
        ``consensus.sim.protocol``); only their ``Runtime``, fabric endpoint and registry are
        simulated.
Rule 2: each replica incarnation owns its tasks (boot, the protocol's activities, its client), so
        a crash kills all of them. A plain crash keeps the regions and the application state
        (rolled back to the applied index the replica had published) and the restart
        re-attaches them; a crash on fresh memory (``crash(..., fresh=True)``) wipes the regions
        (old handles raise ``RegionClosed``) and loses the application state, and the new
        incarnation rejoins by snapshot (``consensus.sim.app``). The registry outlives every
        incarnation, so a fresh incarnation knows it ran before (its ``started`` key).
Rule 3: every payload is proposed once (a unique counter in its first bytes); an acknowledged
        proposal is recorded with its index; every delivery goes to the history checker at once.
Rule 4: faults strike only during the fault phase; at ``plan.heal_ns`` every fault is healed
        (resume, un-slow, disarm, restart crashed replicas; a lost permission is the owner's to
        restore) and from then on proposals must commit within ``LIVENESS_NS``; at
        ``plan.end_ns`` every live replica must have delivered everything acknowledged
        ``CATCHUP_NS`` before (a replica that fell behind the log or restarted on fresh memory
        included: it recovers by itself), no replica may have stopped taking part, and
        ``stop()`` must return.
Rule 5: a run that reaches ``plan.steps_max`` switch points ends early and is reported as
        truncated (its safety checks still count; its liveness checks did not run).
Rule 6: between two steps, whenever its role mutex is free, the replica whose task just ran is
        checked with its ``_check()`` (every replica every ``CHECK_ALL_EVERY_STEPS`` steps);
        a failed check is a violation. Checks never change state, so they never change a trace.
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from consensus import ctrl as ctrl_mod
from consensus.runtime import Runtime, Signal
from consensus.sim.app import ChainApp, SimSnapshotPort
from consensus.sim.checkers import DigestChecker, ExclusiveWriterChecker, HistoryChecker, Violation
from consensus.sim.fabric import SimNetwork
from consensus.sim.nemesis import Nemesis
from consensus.sim.plan import NS_PER_MS, Plan
from consensus.sim.protocol import ProtocolAdapter, ReplicaLike, ReplicaSpec, mu_protocol
from consensus.sim.registry import SimRegistry
from consensus.sim.runtime import SimRuntime
from consensus.sim.scheduler import WORLD_OWNER, Scheduler

# After the heal an acknowledged proposal must come within this: failure detection (2 ms), a
# failed campaign (5 ms), its random back-off (up to 5 ms) and a second campaign.
LIVENESS_NS = 15 * NS_PER_MS
CATCHUP_NS = 8 * NS_PER_MS  # acknowledged this long before the end => delivered by every replica
SHUTDOWN_NS = 10 * NS_PER_MS  # stop() of every replica must return within this
CLIENT_IDLE_S = 0.000_2  # a client on a non-leader looks again after this
CLIENT_BACKOFF_S = 0.000_1  # after NotLeader / a timeout
PROPOSE_TIMEOUT_S = 0.005
BATCH_MAX = 8
PAYLOAD_HEADER = struct.Struct("<I")  # the unique proposal counter
LOG_TAIL_LINES = 400  # protocol log lines and world events kept per run, shown with a failure
PROTOCOL_LOGGER = "consensus"
CHECK_ALL_EVERY_STEPS = 64  # Rule 6: every replica's _check() at least this often


class _LogTap(logging.Handler):
    """Keeps the protocol's last log lines, stamped with simulated time, instead of printing."""

    def __init__(self, scheduler: Scheduler) -> None:
        super().__init__(logging.DEBUG)
        self.scheduler = scheduler
        self.lines: deque[str] = deque(maxlen=LOG_TAIL_LINES)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{self.scheduler.now_ns / NS_PER_MS:9.3f} ms "
                          f"{record.levelname.lower()}: {record.getMessage()}")


@dataclass(eq=False)
class Node:
    """A replica slot in the world, across incarnations (mutable world state)."""

    replica_id: int
    incarnation: int = 0
    replica: ReplicaLike | None = None
    runtime: SimRuntime | None = None
    up: bool = False  # booted and not crashed
    stopped: bool = False  # SIGSTOP-paused by the nemesis
    hook_paused: bool = False  # paused through replica.pause()
    is_leader: bool = False  # as last reported by on_leader_change
    app: ChainApp | None = None  # the application state (survives a plain crash only)
    fresh: bool = False  # the next incarnation boots on fresh memory
    port: SimSnapshotPort | None = None
    commands: list[str] = field(default_factory=list)  # pause/resume, for the control task
    command_ready: Signal | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    seed: int
    failure: str | None
    trace_hash: str
    steps: int
    sim_ns: int
    proposals: int
    acks: int
    deliveries: int
    faults: tuple[tuple[str, int], ...]
    truncated: bool
    snapshots: int  # snapshots installed (restarts on fresh memory, overrun replicas)
    fetches: int  # snapshot fetches started (some fail: provider crashed, stopped, corrupt)
    digests: int  # application states compared across replicas (checkers Rule 8)
    regions_moved: int  # revokes that moved a region from under a stopped writer (fabric Rule 9)
    wall_s: float
    plan: str
    log_tail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(eq=False)
class _Counters:
    proposals: int = 0
    acks_after_heal: int = 0
    ack_times: list[tuple[int, int]] = field(default_factory=list)  # (time_ns, index)


class World:
    """One seeded run; ``run()`` once."""

    def __init__(self, plan: Plan, protocol: ProtocolAdapter | None = None) -> None:
        self.plan = plan
        self.protocol = protocol if protocol is not None else mu_protocol()
        self.scheduler = Scheduler(plan.seed, plan.step_ns, plan.stickiness)
        self.history = HistoryChecker(self.report)
        self.writers = ExclusiveWriterChecker(self.report)
        self.digests = DigestChecker(self.report)
        self.fetches = 0
        self.network = SimNetwork(self.scheduler, self.writers, self.crash)
        self.network.note = self.note
        self.members = tuple(range(1, plan.replicas + 1))
        self.nodes = {r: Node(r) for r in self.members}
        self.registry_store: dict[str, bytes] = {}
        self.nemesis = Nemesis(self)
        self.counters = _Counters()
        self.truncated = False
        self.shutdown_done = False
        self.closing = False
        self.tap = _LogTap(self.scheduler)
        self.rng = self.scheduler.rng

    # ------------------------------------------------------------------ running
    def run(self) -> RunResult:
        started = time.perf_counter()
        plan = self.plan
        for node in self.nodes.values():
            self.boot(node)
        if plan.faults:
            self.nemesis.schedule()
        self.scheduler.at(plan.heal_ns, self.heal)
        self.scheduler.at(plan.heal_ns + LIVENESS_NS, self.check_liveness)
        self.scheduler.at(plan.end_ns, self.shutdown)
        self.scheduler.at(plan.end_ns + SHUTDOWN_NS, self.check_shutdown)
        self.scheduler.on_step = self.on_step
        logger = logging.getLogger(PROTOCOL_LOGGER)
        tap = self.tap
        saved = (logger.level, logger.propagate)
        logger.addHandler(tap)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            self.scheduler.run()
        finally:
            logger.removeHandler(tap)
            logger.setLevel(saved[0])
            logger.propagate = saved[1]
        self.network.close()
        return RunResult(
            seed=plan.seed,
            failure=self.scheduler.failure,
            trace_hash=self.scheduler.trace_hash(),
            steps=self.scheduler.steps,
            sim_ns=self.scheduler.now_ns,
            proposals=self.counters.proposals,
            acks=len(self.history.acked),
            deliveries=self.history.deliveries,
            faults=tuple(sorted(self.nemesis.counts.items())),
            truncated=self.truncated,
            snapshots=self.history.installs,
            fetches=self.fetches,
            digests=self.digests.checked,
            regions_moved=self.network.regions_moved,
            wall_s=time.perf_counter() - started,
            plan=plan.describe(),
            log_tail=tuple(tap.lines),
        )

    def on_step(self) -> None:
        scheduler = self.scheduler
        if scheduler.steps >= self.plan.steps_max:
            self.truncated = True
            scheduler.stop()
            return
        if scheduler.steps % CHECK_ALL_EVERY_STEPS == 0:
            for node in self.nodes.values():
                self.check_replica(node)
            return
        task = scheduler.current
        current = None if task is None else self.nodes.get(task.owner)
        if current is not None:
            self.check_replica(current)

    def check_replica(self, node: Node) -> None:
        """Rule 6: ``node``'s replica ``_check()``, if it is up and its role mutex is free."""
        replica = node.replica
        check = getattr(replica, "_check", None)
        if not node.up or check is None:
            return
        try:
            check()
        except AssertionError as error:
            self.report(Violation("replica-check", f"replica {node.replica_id}: {error}"))

    def note(self, text: str) -> None:
        """A world event (fault, crash, restart, heal) for the trace and the failure report."""
        self.scheduler.trace(text)
        self.tap.lines.append(f"{self.scheduler.now_ns / NS_PER_MS:9.3f} ms world: {text}")

    def report(self, violation: Violation) -> None:
        self.scheduler.fail(f"{violation} (t={self.scheduler.now_ns} ns, "
                            f"step {self.scheduler.steps})")

    # ------------------------------------------------------------- incarnations
    def boot(self, node: Node) -> None:
        """Start a new incarnation of ``node`` (a restart if it ran before)."""
        node.incarnation += 1
        restarted = node.incarnation > 1
        label = f"r{node.replica_id}" + (f"i{node.incarnation}" if restarted else "")
        if restarted:
            self.note(f"restart r{node.replica_id} (incarnation {node.incarnation})")
        runtime = SimRuntime(self.scheduler, node.replica_id, label, self.plan.seed)
        node.runtime = runtime
        node.up, node.stopped, node.hook_paused, node.is_leader = True, False, False, False
        node.commands = []
        node.command_ready = runtime.signal()
        incarnation = node.incarnation
        fresh, node.fresh = node.fresh, False
        app = self.attach_app(node, incarnation)
        node.port = SimSnapshotPort(self, node, runtime)
        spec = ReplicaSpec(
            replica_id=node.replica_id,
            members=self.members,
            payload_bytes_max=self.plan.payload_bytes_max,
            log_slots=self.plan.log_slots,
            restarted=restarted,
            fresh_memory=fresh,
            snapshots=node.port,
        )

        def on_commit(index: int, payload: bytes) -> None:
            data = bytes(payload)
            self.history.delivered(node.replica_id, incarnation, index, data)
            app.deliver(index, data)

        def boot_task() -> None:
            fabric = self.network.endpoint(node.replica_id)
            registry = SimRegistry(self.scheduler, f"sim{self.plan.seed}", self.registry_store)
            replica = self.protocol.build(
                spec,
                fabric,
                registry,
                runtime,
                on_commit,
                lambda leader, is_self: self.leader_changed(node, incarnation, is_self),
            )
            replica.start()
            node.replica = replica  # once started: a booting replica counts as down (nemesis)
            runtime.spawn("client", lambda: self.client(node, incarnation, runtime, replica))
            runtime.spawn("control", lambda: self.control(node, incarnation, replica))

        runtime.spawn("boot", boot_task)

    def attach_app(self, node: Node, incarnation: int) -> ChainApp:
        """The application state of ``node``'s new incarnation (Rule 2): the surviving one,
        rolled back to the applied index in the ctrl region it re-attaches, or a new one."""
        replica_id = node.replica_id
        region = self.network.memory.region(replica_id, "ctrl")
        reattach = region is not None and (
            ctrl_mod.U64.unpack_from(region.buf, ctrl_mod.MAGIC_OFFSET)[0] == ctrl_mod.MAGIC)
        app = node.app
        if app is None or not reattach:
            app = ChainApp(lambda rule, detail: self.report(
                Violation(rule, f"replica {replica_id}: {detail}")))
        else:
            assert region is not None
            applied = ctrl_mod.U64.unpack_from(region.buf, ctrl_mod.APPLIED_OFFSET)[0]
            pending = ctrl_mod.U64.unpack_from(region.buf, ctrl_mod.RECOVERING_OFFSET)[0]
            if not app.rollback(applied) and not pending:  # pending: a snapshot replaces it
                self.report(Violation("app-state", f"replica {replica_id} restarts with applied "
                                      f"{applied} published, but its application is at "
                                      f"{app.index}"))
        node.app = app

        def on_state(index: int, digest: bytes, how: str) -> None:
            self.digests.state(replica_id, index, digest, how)
            if how == "installed":
                self.history.snapshot_installed(replica_id, incarnation, index)

        app.on_state = on_state
        return app

    def command(self, node: Node, command: str) -> None:
        """Queue ``pause``/``resume`` for ``node``'s control task (the FIFO of production: one
        reader, so hook calls never overtake each other)."""
        assert command in ("pause", "resume")
        assert node.command_ready is not None
        self.note(f"{command} hook r{node.replica_id}")
        node.commands.append(command)
        node.command_ready.set()

    def control(self, node: Node, incarnation: int, replica: ReplicaLike) -> None:
        ready = node.command_ready
        assert ready is not None
        while node.incarnation == incarnation:
            if not node.commands:
                ready.clear()
                ready.wait(None)
                continue
            command = node.commands.pop(0)
            if command == "pause":
                replica.pause()
            else:
                replica.resume()

    def leader_changed(self, node: Node, incarnation: int, is_self: bool) -> None:
        if node.incarnation == incarnation:
            node.is_leader = is_self
            self.scheduler.trace(f"leader r{node.replica_id} {is_self}")

    def crash(self, replica_id: int, why: str, fresh: bool = False) -> None:
        """Kill ``replica_id``'s incarnation; ``fresh``: its memory is lost too (Rule 2)."""
        node = self.nodes[replica_id]
        if not node.up:
            return
        self.note(f"crash r{replica_id}{' (memory lost)' if fresh else ''}: {why}")
        node.up, node.is_leader, node.replica = False, False, None
        self.network.triggers.pop(replica_id, None)
        self.network.stop_mid_write.discard(replica_id)
        endpoint = self.network.endpoints.get(replica_id)
        if endpoint is not None:
            endpoint.crash()
        self.scheduler.kill_owner(replica_id)
        self.scheduler.paused.discard(replica_id)
        self.scheduler.slowed.discard(replica_id)
        if fresh:
            self.network.wipe(replica_id)
            node.app = None
            node.fresh = True
        self.nemesis.after_crash(node)

    # ------------------------------------------------------------------ clients
    def client(self, node: Node, incarnation: int, runtime: Runtime, replica: ReplicaLike) -> None:
        expected = self.protocol.expected_errors
        while node.incarnation == incarnation and not self.closing:
            if not node.is_leader:
                runtime.sleep(CLIENT_IDLE_S)
                continue
            size = 1
            if self.rng.random() < self.plan.pipeline_p:
                size = self.rng.randint(2, BATCH_MAX)
            payloads = [self.next_payload() for _ in range(size)]
            try:
                if size == 1:
                    indexes = [replica.propose(payloads[0], PROPOSE_TIMEOUT_S)]
                else:
                    indexes = replica.propose_many(payloads, PROPOSE_TIMEOUT_S)
            except expected:
                runtime.sleep(CLIENT_BACKOFF_S)
                continue
            assert len(indexes) == len(payloads), "propose_many returned the wrong count"
            for index, payload in zip(indexes, payloads, strict=True):
                self.acknowledged(index, payload)
            runtime.sleep(self.rng.randrange(self.plan.think_ns_max) / 1e9)

    def next_payload(self) -> bytes:
        self.counters.proposals += 1
        head = PAYLOAD_HEADER.pack(self.counters.proposals)
        size = self.rng.randint(len(head), max(len(head), self.plan.payload_bytes_max))
        payload = head + bytes(self.rng.getrandbits(8) for _ in range(size - len(head)))
        self.history.proposed(payload)
        return payload

    def acknowledged(self, index: int, payload: bytes) -> None:
        now = self.scheduler.now_ns
        self.counters.ack_times.append((now, index))
        if now >= self.plan.heal_ns:
            self.counters.acks_after_heal += 1
        self.history.acknowledged(index, payload)

    # ------------------------------------------------------------ end of a run
    def heal(self) -> None:
        self.note("heal")
        self.nemesis.heal()

    def check_liveness(self) -> None:
        if self.counters.acks_after_heal == 0:
            up = [n.replica_id for n in self.nodes.values() if n.up]
            leaders = [n.replica_id for n in self.nodes.values() if n.up and n.is_leader]
            self.report(Violation(
                "liveness",
                f"no proposal committed within {LIVENESS_NS / NS_PER_MS:.0f} ms after every "
                f"fault healed (replicas up: {up}, claiming leadership: {leaders})",
            ))

    def shutdown(self) -> None:
        cutoff = self.plan.end_ns - CATCHUP_NS
        acked_upto = max((i for t, i in self.counters.ack_times if t <= cutoff), default=0)
        for node in self.nodes.values():
            if node.up and node.replica is not None and node.replica.error is not None:
                self.report(Violation("error", f"replica {node.replica_id} stopped "
                                      f"taking part: {node.replica.error!r}"))
        live = [(n.replica_id, n.incarnation) for n in self.nodes.values() if n.up]
        self.history.check_caught_up(live, acked_upto)
        replicas = [n.replica for n in self.nodes.values() if n.up and n.replica is not None]
        self.closing = True  # clients stop proposing
        self.scheduler.spawn("world.shutdown", WORLD_OWNER, lambda: self.stop_all(replicas))

    def stop_all(self, replicas: list[ReplicaLike]) -> None:
        for replica in replicas:
            replica.stop()
        self.shutdown_done = True
        self.scheduler.stop()

    def check_shutdown(self) -> None:
        if not self.shutdown_done:
            self.report(Violation(
                "shutdown", f"stop() did not return within {SHUTDOWN_NS / NS_PER_MS:.0f} ms"
            ))
