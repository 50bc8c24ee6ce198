"""The control plane's pure core: workflow specs, ``$.`` references and the engine
(with its timers and the changelog records of its state).

The Kafka shell (``orchestrator.shell.service``) feeds the :class:`Engine` and produces the
:class:`Effects` it returns; nothing here touches a broker.
"""

from orchestrator.engine import (
    Effects,
    Engine,
    FinishedTask,
    FinishedWorkflow,
    StepRun,
    TaskRun,
    WorkflowState,
    task_id_for,
)
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
    "find_refs",
    "is_ref",
    "load_spec_file",
    "lookup",
    "parse_ref",
    "parse_spec",
    "resolve",
    "task_id_for",
]
