"""The fault plan: which faults, in a seeded order, at bounded, spread-out times."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from tests.fault.config import FaultConfig


class FaultKind(StrEnum):
    KILL_ORCHESTRATOR = "kill -9 orchestrator"
    KILL_WORKER = "kill -9 worker"
    PAUSE_ORCHESTRATOR = "SIGSTOP orchestrator"
    RESTART_BROKER = "restart broker"
    KILL_BROKER_NODE = "kill -9 broker node"
    GARBAGE = "inject garbage"


@dataclass(frozen=True)
class PlannedFault:
    at_s: float  # after the fleet is up and the first workflow went through
    kind: FaultKind


def plan_faults(config: FaultConfig, rng: random.Random, window_s: float) -> list[PlannedFault]:
    """The schedule: kinds in seeded order at evenly spread, jittered times in the window.

    Broker node kills are spread evenly over the run and the broker restart sits near
    the middle (work in flight on both sides of each).
    """
    kinds = (
        [FaultKind.KILL_ORCHESTRATOR] * config.orchestrator_kills
        + [FaultKind.KILL_WORKER] * config.worker_kills
        + [FaultKind.PAUSE_ORCHESTRATOR] * config.pauses
        + [FaultKind.GARBAGE] * config.garbage_rounds
    )
    rng.shuffle(kinds)
    others = len(kinds)
    for k in reversed(range(config.broker_kills)):  # from the back: earlier places hold
        kinds.insert(others * (k + 1) // (config.broker_kills + 1), FaultKind.KILL_BROKER_NODE)
    for _ in range(config.broker_restarts):
        kinds.insert(len(kinds) // 2, FaultKind.RESTART_BROKER)
    if not kinds:
        return []
    # Even slots with jitter, never closer than fault_gap_s; a short window stretches.
    step = max(config.fault_gap_s, window_s / (len(kinds) + 1))
    plan, at = [], 0.0
    for n, kind in enumerate(kinds):
        slot = step * (n + 1)
        at = max(at + config.fault_gap_s, slot + rng.uniform(-0.3, 0.3) * step)
        plan.append(PlannedFault(round(at, 2), kind))
    return plan
