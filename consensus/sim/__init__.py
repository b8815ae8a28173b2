"""consensus.sim: deterministic simulation of the Mu protocol (seeded scheduler, simulated fabric,
fault injection, invariant checkers). ``python -m consensus.sim --seeds N`` runs it."""

from consensus.sim.runtime import SimRuntime
from consensus.sim.scheduler import Scheduler, SimKilled

__all__ = ["Scheduler", "SimKilled", "SimRuntime"]
