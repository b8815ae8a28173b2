"""The simulator's nemesis: faults at random simulated times during the fault phase, all healed at
``plan.heal_ns``.

Rule 1: every choice comes from the scheduler's seeded RNG, with the baton held.
Rule 2: at most ``f = (n - 1) // 2`` replicas are down at once (crashed, SIGSTOPped, paused through
        the hook, armed to crash mid-write, or recovering: fetching a snapshot or catching up
        after one, which an amnesiac replica must finish before it counts as a voter), so a
        majority could always make progress; safety is checked regardless, liveness only after
        the heal.
Rule 3: the faults are the physically possible ones: a crash (tasks killed at their next switch
        point, regions kept, restart re-attaches them), a crash of the leader between two writes
        of one entry to different followers (whole or torn), SIGSTOP/SIGCONT, the replica's own
        pause hook, slowing a replica's steps, and a loss of write permission: the fabric
        withdraws the current holder's permission on a follower's log (as a broken connection
        does), so the holder's next write fails with ``WriteRejected``; a write already in
        flight may still land (fabric Rule 6).
Rule 4: the nemesis never grants. Only a region's owner changes who may write it, through its
        own switcher (revoke every other writer, then grant); a lost permission is an error the
        owner repairs when the holder asks again. A nemesis that re-granted the holder itself
        was a second actor no real system has: at a heal it re-granted a holder while the owner
        was inside its own revoke of that holder (waiting for a write in flight), and the
        owner's next grant left two writers (issue 17, seeds 778475 and 777672).
Rule 5: ``crash-fresh`` is a crash that loses the replica's memory (its regions and application
        state, ``World.crash(fresh=True)``); its restart comes back amnesiac and rejoins by
        snapshot (``consensus.rejoin``).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from consensus.sim.fabric import CrashTrigger
from consensus.sim.plan import NS_PER_MS
from consensus.sim.scheduler import WORLD_OWNER

if TYPE_CHECKING:
    from consensus.sim.world import Node, World

FAULT_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("crash", 3),
    ("crash-leader-mid-write", 3),
    ("sigstop", 3),
    ("sigstop-mid-write", 2),
    ("pause-hook", 2),
    ("slow", 2),
    ("revoke", 2),
    ("crash-fresh", 3),
)
FAULT_DURATION_NS_MIN = 100_000
FAULT_DURATION_NS_MAX = 6 * NS_PER_MS
LEADER_TARGET_P = 0.6  # share of stop/pause faults aimed at the current leader
TORN_WRITE_P = 0.3
STOP_MID_WRITE_NS_MIN = 2_500_000  # longer than the simulated failure detection (2 ms) ...
STOP_MID_WRITE_NS_MAX = 8_000_000  # ... so that a follower switches and its revoke stalls
LOG_REGION = "log"


def recovering(node: Node) -> bool:
    """``node`` is booting (its replica not started yet) or rejoins by snapshot: Rule 2 counts
    it as down (a fresh incarnation is amnesiac from the moment it starts)."""
    if node.replica is None:
        return node.up
    return getattr(node.replica, "recovery", None) is not None


class Nemesis:
    def __init__(self, world: World) -> None:
        self.world = world
        self.scheduler = world.scheduler
        self.rng = world.scheduler.rng
        self.counts: Counter[str] = Counter()
        self.healed = False
        world.network.on_stop_mid_write = self.stopped_mid_write

    # ---------------------------------------------------------------- planning
    def schedule(self) -> None:
        plan = self.world.plan
        rate_per_ns = plan.faults_per_ms / NS_PER_MS
        at = 0.0
        while True:
            at += self.rng.expovariate(rate_per_ns)
            if at >= plan.heal_ns:
                return
            self.scheduler.at(int(at), self.strike)

    def strike(self) -> None:
        if self.healed:
            return
        kinds = [k for k, _ in FAULT_WEIGHTS]
        kind = self.rng.choices(kinds, [w for _, w in FAULT_WEIGHTS])[0]
        strike = {
            "crash": self.crash,
            "crash-leader-mid-write": self.crash_leader_mid_write,
            "sigstop": self.sigstop,
            "sigstop-mid-write": self.sigstop_mid_write,
            "pause-hook": self.pause_hook,
            "slow": self.slow,
            "revoke": self.revoke,
            "crash-fresh": self.crash_fresh,
        }[kind]
        if strike():
            self.counts[kind] += 1

    def duration_ns(self) -> int:
        return self.rng.randint(FAULT_DURATION_NS_MIN, FAULT_DURATION_NS_MAX)

    def later(self, action: object) -> None:
        assert callable(action)
        self.scheduler.at(self.scheduler.now_ns + self.duration_ns(), action)

    # ------------------------------------------------------------------ targets
    def down(self) -> int:
        triggers = self.world.network.triggers
        return sum(
            1
            for n in self.world.nodes.values()
            if not n.up or n.stopped or n.hook_paused or n.replica_id in triggers
            or n.replica_id in self.world.network.stop_mid_write or recovering(n)
        )

    def budget_left(self) -> bool:
        return self.down() < (len(self.world.nodes) - 1) // 2

    def healthy(self) -> list[Node]:
        triggers = self.world.network.triggers
        return [
            n
            for n in self.world.nodes.values()
            if n.up and not n.stopped and not n.hook_paused and n.replica_id not in triggers
            and n.replica_id not in self.world.network.stop_mid_write
        ]

    def pick(self, leader_p: float) -> Node | None:
        nodes = self.healthy()
        if not nodes:
            return None
        leaders = [n for n in nodes if n.is_leader]
        if leaders and self.rng.random() < leader_p:
            return leaders[0]
        return nodes[self.rng.randrange(len(nodes))]

    # ------------------------------------------------------------------- faults
    def crash(self) -> bool:
        node = self.pick(0.3)
        if node is None or not self.budget_left():
            return False
        self.world.crash(node.replica_id, "nemesis")
        return True

    def crash_fresh(self) -> bool:
        """Rule 4."""
        node = self.pick(0.3)
        if node is None or not self.budget_left():
            return False
        self.world.crash(node.replica_id, "nemesis", fresh=True)
        return True

    def after_crash(self, node: Node) -> None:
        """A replica crashed (nemesis or trigger): restart it after a while (or at the heal)."""
        incarnation = node.incarnation

        def restart() -> None:
            if not node.up and node.incarnation == incarnation and not self.healed:
                self.world.boot(node)

        self.later(restart)

    def crash_leader_mid_write(self) -> bool:
        nodes = [n for n in self.healthy() if n.is_leader]
        if not nodes or not self.budget_left():
            return False
        writes = self.rng.randint(1, 2 * (len(self.world.nodes) - 1))
        torn = self.rng.random() < TORN_WRITE_P
        self.world.network.triggers[nodes[0].replica_id] = CrashTrigger(writes, torn)
        self.world.note(f"arm r{nodes[0].replica_id}: crash after {writes} log writes"
                        f"{' (torn)' if torn else ''}")
        return True

    def sigstop(self) -> bool:
        node = self.pick(LEADER_TARGET_P)
        if node is None or not self.budget_left():
            return False
        node.stopped = True
        self.scheduler.paused.add(node.replica_id)
        self.world.note(f"SIGSTOP r{node.replica_id}")
        incarnation = node.incarnation

        def sigcont() -> None:
            if node.incarnation == incarnation and node.stopped:
                node.stopped = False
                self.scheduler.paused.discard(node.replica_id)
                self.world.note(f"SIGCONT r{node.replica_id}")

        self.later(sigcont)
        return True

    def sigstop_mid_write(self) -> bool:
        """Arm: SIGSTOP the leader inside its next log write, long enough to be replaced, so a
        follower's revoke of it moves that follower's region (fabric Rule 9): part of the write
        lands, the rest never does, and the leader, continued, finds the write refused."""
        nodes = [n for n in self.healthy() if n.is_leader]
        if not nodes or not self.budget_left():
            return False
        self.world.network.stop_mid_write.add(nodes[0].replica_id)
        self.world.note(f"arm r{nodes[0].replica_id}: SIGSTOP inside its next log write")
        return True

    def stopped_mid_write(self, replica_id: int) -> None:
        node = self.world.nodes[replica_id]
        node.stopped = True
        self.scheduler.paused.add(replica_id)
        self.world.note(f"SIGSTOP r{replica_id} inside a log write")
        incarnation = node.incarnation

        def sigcont() -> None:
            if node.incarnation == incarnation and node.stopped:
                node.stopped = False
                self.scheduler.paused.discard(replica_id)
                self.world.note(f"SIGCONT r{replica_id}")

        hold_ns = self.rng.randint(STOP_MID_WRITE_NS_MIN, STOP_MID_WRITE_NS_MAX)
        self.scheduler.at(self.scheduler.now_ns + hold_ns, sigcont)

    def pause_hook(self) -> bool:
        node = self.pick(LEADER_TARGET_P)
        if node is None or node.replica is None or not self.budget_left():
            return False
        node.hook_paused = True
        self.call_hook(node, "pause")
        incarnation = node.incarnation

        def resume() -> None:
            if node.incarnation == incarnation and node.hook_paused and node.up:
                node.hook_paused = False
                self.call_hook(node, "resume")

        self.later(resume)
        return True

    def call_hook(self, node: Node, which: str) -> None:
        """Ask ``node``'s control task to call ``replica.pause()``/``resume()``."""
        self.world.command(node, which)

    def slow(self) -> bool:
        node = self.pick(0.5)
        if node is None:
            return False
        replica_id, incarnation = node.replica_id, node.incarnation
        self.scheduler.slowed.add(replica_id)
        self.world.note(f"slow r{replica_id}")

        def unslow() -> None:
            if node.incarnation == incarnation:
                self.scheduler.slowed.discard(replica_id)
                self.world.note(f"unslow r{replica_id}")

        self.later(unslow)
        return True

    def revoke(self) -> bool:
        """Rule 3: the sole holder of a random replica's log loses its permission; Rule 4: only
        the owner gives it back."""
        network = self.world.network
        owners = [n.replica_id for n in self.world.nodes.values()]
        owner = owners[self.rng.randrange(len(owners))]
        region = network.memory.region(owner, LOG_REGION)
        if region is None:
            return False
        holders = sorted(region.writers())
        if len(holders) != 1:
            return False
        network.withdraw_permission(owner, LOG_REGION, holders[0], "nemesis")
        return True

    # -------------------------------------------------------------------- heal
    def heal(self) -> None:
        """End every fault: resume, un-slow, disarm, restart the crashed. Lost permissions are
        not restored here (Rule 4): the owners restore them when asked."""
        self.healed = True
        world = self.world
        world.network.triggers.clear()
        world.network.stop_mid_write.clear()
        self.scheduler.slowed.clear()
        for node in world.nodes.values():
            if not node.up:
                world.boot(node)
                continue
            if node.stopped:
                node.stopped = False
                self.scheduler.paused.discard(node.replica_id)
            if node.hook_paused:
                node.hook_paused = False
                self.call_hook(node, "resume")
        assert not self.scheduler.paused or WORLD_OWNER not in self.scheduler.paused
