"""The control plane's pure core: workflow specs, ``$.`` references and the engine.

The Kafka shell (``orchestrator.service``) feeds the :class:`Engine` and produces the
:class:`Effects` it returns; nothing here touches a broker.
"""

from orchestrator.engine import (
    Effects,
    Engine,
    FinishedTask,
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
from orchestrator.spec import StepSpec, WorkflowSpec, load_spec_file, parse_spec

__all__ = [
    "Context",
    "Effects",
    "Engine",
    "FinishedTask",
    "Ref",
    "RefSyntaxError",
    "Root",
    "StepRun",
    "StepSpec",
    "TaskRun",
    "WorkflowSpec",
    "WorkflowState",
    "find_refs",
    "is_ref",
    "load_spec_file",
    "lookup",
    "parse_ref",
    "parse_spec",
    "resolve",
    "task_id_for",
]
