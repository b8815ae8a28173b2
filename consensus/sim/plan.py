"""The knobs of one simulated run, all drawn from its seed.

Rule 1: a ``Plan`` is a pure function of the seed and the caller's overrides: printing the seed
        (and the overrides) is enough to re-run the same plan.
Rule 2: times are simulated nanoseconds. The run has a fault phase (faults strike at random
        times), then the world heals every fault and a quiet phase follows in which proposals
        must commit again (liveness) and every live replica must catch up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

NS_PER_MS = 1_000_000
STEPS_MAX_DEFAULT = 25_000  # switch points per run: the safety net that bounds a run's wall time
FAULT_PHASE_NS_DEFAULT = 25 * NS_PER_MS
QUIET_PHASE_NS_DEFAULT = 22 * NS_PER_MS
FIVE_REPLICAS_P = 0.2  # share of runs with 5 replicas instead of 3


@dataclass(frozen=True, slots=True)
class Plan:
    seed: int
    replicas: int
    step_ns: int  # simulated time one switch point costs
    stickiness: float  # probability that the running task keeps the baton at a switch point
    steps_max: int
    fault_phase_ns: int
    quiet_phase_ns: int
    faults_per_ms: float  # mean rate of fault events during the fault phase
    log_slots: int
    payload_bytes_max: int
    pipeline_p: float  # probability that a client proposes a batch (propose_many)
    think_ns_max: int  # a client waits up to this between two proposals
    faults: bool

    @property
    def heal_ns(self) -> int:
        return self.fault_phase_ns

    @property
    def end_ns(self) -> int:
        return self.fault_phase_ns + self.quiet_phase_ns

    def describe(self) -> str:
        return (
            f"seed={self.seed} replicas={self.replicas} step_ns={self.step_ns} "
            f"stickiness={self.stickiness:.2f} faults/ms={self.faults_per_ms:.2f} "
            f"log_slots={self.log_slots} payload_max={self.payload_bytes_max} "
            f"think_us={self.think_ns_max // 1000} pipeline_p={self.pipeline_p}"
        )


def make_plan(
    seed: int,
    steps_max: int = STEPS_MAX_DEFAULT,
    fault_phase_ns: int = FAULT_PHASE_NS_DEFAULT,
    quiet_phase_ns: int = QUIET_PHASE_NS_DEFAULT,
    faults: bool = True,
    replicas: int | None = None,
    batches: bool = True,
) -> Plan:
    """Draw a run's knobs from ``seed``; the keyword arguments override the defaults."""
    rng = random.Random(f"plan/{seed}")
    plan = Plan(
        seed=seed,
        replicas=5 if rng.random() < FIVE_REPLICAS_P else 3,
        step_ns=rng.choice((2_000, 2_500, 3_000)),
        stickiness=rng.uniform(0.2, 0.8),
        steps_max=steps_max,
        fault_phase_ns=fault_phase_ns,
        quiet_phase_ns=quiet_phase_ns,
        faults_per_ms=rng.choice((0.1, 0.25, 0.5, 1.0)),
        log_slots=rng.choice((64, 256, 1024)),
        payload_bytes_max=rng.choice((8, 64, 200)),
        pipeline_p=rng.choice((0.0, 0.3, 0.7)),
        think_ns_max=rng.choice((100_000, 300_000, 1_000_000)),
        faults=faults,
    )
    if not batches:
        plan = replace(plan, pipeline_p=0.0)
    if replicas is not None:
        assert replicas in (3, 5), replicas
        plan = replace(plan, replicas=replicas)
    return plan
