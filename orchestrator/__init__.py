"""The control plane's pure core: workflow specs, ``$.`` references and the engine
(with its timers and the changelog records of its state). Nothing here touches a
broker: the Kafka shell (``orchestrator.shell``) feeds the :class:`Engine` and produces
the :class:`Effects` it returns.

One module per concept:

* specs: ``spec`` (the models and ``parse_spec``), ``validate`` (checks across steps:
  ids, needs, cycles, references), ``problems`` (``(location, reason)`` and pydantic's
  errors in that form), ``specfile`` (reading a YAML or JSON file), ``refs`` (``$.``
  references and their resolution);
* the engine: ``engine`` (the facade and the lifecycle: submit, cancel, terminal
  events, timers firing), ``admission`` (what the market policy allows a spec; band
  and budget), ``decompose`` (ready steps started as tasks, ``for_each`` fan-out),
  ``fanin`` (results collected, steps completed, the workflow output), ``retry`` (the
  retry decision and backoff), ``acquire`` (the workflow side of the market: bids,
  leases, the auctioneer's answers), ``cancellation`` (attempts the workers are told to
  stop), ``transition`` (what those share);
* its memory: ``state`` (plain data), ``store`` (workflows, timers, changes),
  ``timers``, ``snapshot`` (changelog records), ``effects`` (what the shell must do);
* ``market``: the auctioneer's side (policy, clearing, book, ledger, budget, stats).
"""

from orchestrator.admission import check_market
from orchestrator.effects import Effects, FinishedTask
from orchestrator.engine import Engine
from orchestrator.refs import (
    Context,
    Ref,
    RefSyntaxError,
    Root,
    find_refs,
    is_ref,
    lookup,
    parse_ref,
    resolve,
)
from orchestrator.retry import backoff_ms
from orchestrator.spec import StepSpec, WorkflowSpec, parse_spec
from orchestrator.specfile import load_spec_file
from orchestrator.state import FinishedWorkflow, StepRun, TaskRun, WorkflowState, task_id_for
from orchestrator.timers import Timer, TimerKind

__all__ = [
    "Context",
    "Effects",
    "Engine",
    "FinishedTask",
    "FinishedWorkflow",
    "Ref",
    "RefSyntaxError",
    "Root",
    "StepRun",
    "StepSpec",
    "TaskRun",
    "Timer",
    "TimerKind",
    "WorkflowSpec",
    "WorkflowState",
    "backoff_ms",
    "check_market",
    "find_refs",
    "is_ref",
    "load_spec_file",
    "lookup",
    "parse_ref",
    "parse_spec",
    "resolve",
    "task_id_for",
]
