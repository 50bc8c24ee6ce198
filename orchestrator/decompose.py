"""Decomposition: which steps may start, and starting one as its tasks.

A step starts once every step it needs is complete (in spec order, which keeps
dispatch order, and so replay, deterministic). Starting it resolves its references
against the workflow's input and the outputs so far: a plain step becomes one task, a
``for_each`` step one task per element of the list its reference resolves to, each
with its own ``$.item`` and ``$.index``. A reference that fails at run time fails the
workflow; it never raises out of the engine.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import JsonValue

from fleet.errors import ResolutionError
from fleet.json_codec import json_kind
from fleet.messages import WorkflowError
from orchestrator import acquire, fanin
from orchestrator.refs import Context, resolve
from orchestrator.spec import StepSpec
from orchestrator.state import StepRun, TaskRun, WorkflowState, task_id_for
from orchestrator.transition import Transition, WorkflowFailed


def advance(t: Transition, state: WorkflowState) -> None:
    """Start every step whose needs are complete; repeat while steps complete at once
    (empty fan-outs); finish the workflow when every step is complete."""
    while ready := state.ready_steps():
        for step in ready:
            start_step(t, state, step)
    fanin.finish_if_complete(t, state)


def start_step(t: Transition, state: WorkflowState, step: StepSpec) -> None:
    ctx = state.context()
    if step.for_each is None:
        elements: Iterable[tuple[int | None, JsonValue]] = [(None, None)]
    else:
        items = _resolve_or_fail(step, step.for_each, ctx)
        if not isinstance(items, list):
            raise WorkflowFailed(
                WorkflowError(
                    type="ResolutionError",
                    message=f"{step.for_each}: for_each must resolve to a list, "
                    f"got {json_kind(items)}",
                    step_id=step.id,
                )
            )
        if not items:
            # Nothing to fan out: the step is done, and its dependents may start now.
            fanin.complete_step(t, state, step.id, [])
            return
        elements = enumerate(items)
    task_ids = []
    for index, item in elements:
        element_ctx = Context(ctx.input, ctx.outputs, item, index)
        task_input = _resolve_or_fail(step, step.input, element_ctx)
        task_id = task_id_for(state.workflow_id, step.id, index or 0)
        run = TaskRun(step.id, index, 1, t.now_ms, t.now_ms, task_input)
        state.tasks[task_id] = run
        task_ids.append(task_id)
        acquire.launch(t, state, step, task_id, run)
    state.running[step.id] = StepRun(task_ids, len(task_ids), step.for_each is not None)


def _resolve_or_fail(step: StepSpec, value: JsonValue, ctx: Context) -> JsonValue:
    """``resolve`` for a step, turning a broken reference into the workflow's failure."""
    try:
        return resolve(value, ctx)
    except ResolutionError as exc:
        element = f"element {ctx.index}: " if ctx.index is not None else ""
        raise WorkflowFailed(
            WorkflowError(type="ResolutionError", message=f"{element}{exc}", step_id=step.id)
        ) from exc
