"""Route only to the living: a ready task no live agent would take waits in the state.

A task dispatched to a capability nobody serves sits in its topic while its ``timeout_s``
runs down, burns its retries, and tells the user nothing. So before a task is dispatched
(or starts bidding for resources: waiting must not hold leases) the engine asks its
:class:`Agents` input whether any agent may take the capability now. If none, the task
*waits*: ``waiting_since_ms`` in its durable state (changelog record, so it survives a
restart or a rebalance like everything else), a NO_AGENT timer at the step's
``no_agent_timeout_s`` and one STEP_WAITING event naming the reason. When the agents
change (:meth:`Engine.agents_changed`, or the engine's tick seeing a new
``Agents.generation``) every waiting task whose capability is served again is
dispatched. A task still waiting at its timeout fails the workflow with ``NoLiveAgent`` (or
``BreakerOpen`` when its capability's circuit breaker held it: the same wait, another
gate, ``orchestrator.shell.breakers``)
(issue 12 item 7 will try the step's escalation chain first; not built yet).

What "may take" means is the shell's answer (``orchestrator.shell.agents``), the engine
only asks; it never reads a clock or a topic. With no answer to give (routing to the
living switched off, or a view not caught up yet) :class:`EveryCapability` says yes to
everything: the behaviour before this module existed.
"""

from __future__ import annotations

from typing import Protocol

from fleet.messages import EventKind
from orchestrator import escalation
from orchestrator.effects import Attempt, seconds, state_event
from orchestrator.spec import StepSpec
from orchestrator.state import TaskRun, WorkflowState
from orchestrator.transition import Transition


class Agents(Protocol):
    """The engine's view of the agents, an input like ``now_ms``."""

    @property
    def generation(self) -> int:
        """Changes whenever an answer of :meth:`serves` may have changed. Read it before
        asking :meth:`serves`, so an answer is never older than the generation seen."""
        ...

    def serves(self, capability: str) -> bool:
        """May a task of ``capability`` be dispatched now (some agent would take it)?"""
        ...

    def why_not(self, capability: str) -> str:
        """Why no agent may take ``capability`` now, for people (the event's reason)."""
        ...

    def cause(self, capability: str) -> str:
        """The error type of a task that waited its whole timeout for ``capability``:
        ``NoLiveAgent``, or ``BreakerOpen`` (orchestrator.shell.breakers)."""
        ...


class EveryCapability:
    """Routes everywhere: no view of the agents (switched off, or not caught up yet)."""

    generation = 0

    def serves(self, capability: str) -> bool:
        return True

    def why_not(self, capability: str) -> str:
        return ""

    def cause(self, capability: str) -> str:
        return "NoLiveAgent"


EVERY_CAPABILITY = EveryCapability()


def hold(t: Transition, state: WorkflowState, step: StepSpec, task_id: str, run: TaskRun) -> bool:
    """True if ``run.attempt`` must wait for a live agent instead of starting now (the
    first time, with its STEP_WAITING event). A capability whose breaker is open passes
    the task on to the next link of its chain first, if there is one."""
    capability = step.capability_at(run.link)
    while not t.agents.serves(capability):
        why = t.agents.why_not(capability)
        # An open breaker says the capability would fail: its fallback, if any, at once.
        if t.agents.cause(capability) != "BreakerOpen" or not escalation.escalate(
            t, state, step, task_id, run, why=why
        ):
            break
        capability = step.capability_at(run.link)
    else:
        return False
    if t.store.wait(state, task_id, run, t.now_ms):
        reason = (
            f"{t.agents.why_not(capability)}; waiting up to "
            f"{seconds(step.no_agent_timeout_s)} s (no_agent_timeout_s) for one"
        )
        waiting = state_event(
            state,
            EventKind.STEP_WAITING,
            t.now_ms,
            step_id=step.id,
            attempt=Attempt(task_id, run.attempt, run.index),
        )
        t.fx.events.append(waiting.model_copy(update={"reason": reason}))
    return True


def no_live_agent(t: Transition, step: StepSpec, run: TaskRun) -> tuple[str, str]:
    """Why a task waited its whole ``no_agent_timeout_s`` in vain: the error type and the
    cause (its escalation's reason, or with :func:`escalation.chain_failed` its failure)."""
    capability = step.capability_at(run.link)
    waited = t.now_ms - (run.waiting_since_ms if run.waiting_since_ms is not None else t.now_ms)
    return t.agents.cause(capability), (
        f"{t.agents.why_not(capability)} within its "
        f"no_agent_timeout_s of {seconds(step.no_agent_timeout_s)} s "
        f"(waited {seconds(round(waited / 1000, 1))} s)"
    )
