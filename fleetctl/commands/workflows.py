"""``fleet submit``, ``fleet tail`` and ``fleet cancel``: the user's side of workflows.

Each closes its reader and its client (``contextlib.closing``) before it returns, on
errors too.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Generator
from contextlib import closing
from pathlib import Path
from typing import Any

import click
from confluent_kafka import KafkaException
from rich.text import Text

from fleet import usage
from fleet.errors import FleetError, SpecError
from fleet.kafka.client import FleetClient
from fleet.kafka.registry import AgentRegistry
from fleet.messages import EventKind, WorkflowEvent
from fleet.settings import Settings
from fleetctl.commands import EXIT_FAILED, EXIT_OK
from fleetctl.commands.params import JSON_OBJECT, SINCE, connected, with_broker, with_settings
from fleetctl.console import KIND_STYLES, echo, format_duration
from fleetctl.dlq import iso_ms
from orchestrator.market.policy import micro_to_credits
from orchestrator.spec import WorkflowSpec, parse_spec
from orchestrator.specfile import load_spec_file

OUTPUT_SHOWN = 200  # characters of a workflow's output on a tail line; --json has it all


@click.command(
    "submit",
    short_help="Submit a workflow (optionally wait for it).",
    help="Submit a workflow: check FILE (and that a worker topic exists for every "
    "capability it uses), send it, print its id. With --wait, print its terminal event as "
    "JSON and exit 0 if it completed, 1 if not.",
)
@click.argument(
    "file",
    type=click.Path(path_type=Path),
    help="the workflow spec, YAML or JSON",
)
@click.option(
    "--input",
    "input_doc",
    type=JSON_OBJECT,
    metavar="JSON",
    help='a JSON object that replaces the spec\'s input, e.g. \'{"text": "hello"}\'',
)
@click.option(
    "--id",
    "workflow_id",
    metavar="ID",
    help="the workflow's id (default: generated); the same id again is the same workflow",
)
@click.option("--wait", is_flag=True, help="wait for the terminal event and print it")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300,
    metavar="SECONDS",
    help="how long --wait waits",
)
@with_settings
def submit(
    settings: Settings,
    *,
    file: Path,
    input_doc: dict[str, Any] | None,
    workflow_id: str | None,
    wait: bool,
    timeout: float,
) -> int:
    doc = load_spec_file(file)
    if input_doc is not None:
        if not isinstance(doc, dict):
            raise SpecError([("(document)", "a workflow spec must be a mapping")])
        doc["input"] = input_doc
    parse_spec(doc)  # the document itself first: a bad file needs no broker to be refused
    with closing(FleetClient(connected(settings), role="submit")) as client:
        # With --wait, a missing task topic is waited for too: the README's walkthrough
        # pasted whole runs submit a second after `fleet worker &`, before that worker
        # has created its topics. Without --wait it is refused at once, as any problem.
        spec, waited = _checked(client, doc, wait_s=timeout if wait else 0.0)
        if not waited:  # a worker that has just created its topics is starting: no warning
            _warn_unserved(client, spec, waits=settings.route_live_only)
        if not wait:
            print(client.submit(doc, workflow_id))  # type: ignore[arg-type]
            return EXIT_OK
        since_ms = _before_now()
        workflow_id = client.submit(doc, workflow_id)  # type: ignore[arg-type]
        print(workflow_id, file=sys.stderr)
        outcome = _outcome(client, workflow_id, since_ms, timeout)
    if outcome is None:
        print(f"fleet: no outcome for {workflow_id} within {timeout:.0f} s", file=sys.stderr)
        return EXIT_FAILED
    print(outcome.model_dump_json())
    return EXIT_OK if outcome.kind.value == "COMPLETED" else EXIT_FAILED


@click.command(
    "tail",
    short_help="Follow workflow events (one workflow to its end).",
    help="Print workflow events as they happen: one line each with its time, the time since "
    "the workflow's submission, and the output or the cause of an ending. With --workflow, "
    "that workflow's events from its start, ending after its last one, even if it ended "
    "before you asked.",
)
@click.option(
    "--workflow",
    "workflow_id",
    metavar="ID",
    help="only this workflow: all of its events, then exit after its terminal event",
)
@click.option(
    "--since",
    "since_ms",
    type=SINCE,
    metavar="WHEN",
    help="start at the events since then: 30s, 10m, 2h, 1d, 1w ago, or an ISO time (UTC "
    "if no offset); default: with --workflow its first event, else new events only",
)
@click.option(
    "--from-beginning",
    is_flag=True,
    help="every event still on the topic, not only new ones (--workflow always starts at "
    "the workflow's first event)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per event and line")
@with_broker
def tail(
    settings: Settings,
    *,
    workflow_id: str | None,
    since_ms: int | None,
    from_beginning: bool,
    as_json: bool,
) -> int:
    with closing(FleetClient(settings, role="tail")) as client:
        if workflow_id is not None:
            events = _one_workflow(client, workflow_id, since_ms)
        else:
            events = _every_workflow(client, since_ms, from_beginning)
        with closing(events):
            for event in events:
                _print_event(event, as_json)
    return EXIT_OK


def _checked(client: FleetClient, doc: object, wait_s: float) -> tuple[WorkflowSpec, bool]:
    """``doc`` parsed with the capabilities checked against the broker, and whether it
    waited; for ``wait_s``, retried while the only problems are capabilities with no
    task topic yet."""
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            spec = parse_spec(doc, has_capability=client.has_capability)  # nothing sent if invalid
            return spec, told
        except SpecError as exc:
            missing = [why for _, why in exc.problems if why.endswith("has no task topic")]
            if not missing:
                raise
            if len(missing) < len(exc.problems) or time.monotonic() >= deadline:
                print(NO_TASK_TOPIC, file=sys.stderr)
                raise
            if not told:
                names = ", ".join(why.split("'")[1] for why in missing)
                print(
                    f"fleet: waiting for a worker to create the task topics of: {names}",
                    file=sys.stderr,
                )
                told = True
            time.sleep(0.5)


NO_TASK_TOPIC = (
    "fleet: a capability's task topic is created by the first `fleet worker` that registers "
    "it (or by `fleet topics apply` from topics.yaml); is that worker started yet?"
)

# How long `fleet submit` reads the agents' heartbeats for its no-live-agent warning.
AGENTS_READ_S = 5.0


def _warn_unserved(client: FleetClient, spec: WorkflowSpec, *, waits: bool) -> None:
    """Warn on stderr for each capability of the workflow no live agent serves now: its
    steps will wait for one (``waits``: routing only to the living, orchestrator.waiting,
    up to their no_agent_timeout_s), or its tasks queue in their topic. A new user's
    workflow for a capability nobody served once waited silently. Advice only: a broker
    slow to answer the read sends the workflow without it."""
    try:
        with closing(AgentRegistry(client.clients, strict=False)) as registry:
            routes = registry.view(AGENTS_READ_S).routes(int(time.time() * 1000))
    except (FleetError, KafkaException):
        return
    for capability in sorted({step.capability for step in spec.steps}):
        if not routes.serves(capability):
            longest = max(s.no_agent_timeout_s for s in spec.steps if s.capability == capability)
            then = f"its steps wait up to {longest:g} s for one" if waits else "its tasks queue"
            print(
                f"fleet: warning: {routes.why_not(capability)} right now; {then} "
                "(start one: fleet worker --app MODULE)",
                file=sys.stderr,
            )


# How far before "now" a --wait starts reading its workflow's partition: its events carry
# the orchestrator's clock, which may run behind this machine's.
CLOCK_SLACK_MS = 60_000


def _before_now() -> int:
    return int(time.time() * 1000) - CLOCK_SLACK_MS


def _outcome(
    client: FleetClient, workflow_id: str, since_ms: int, timeout: float
) -> WorkflowEvent | None:
    """The terminal event of a workflow this command just sent something for."""

    def waiting(why: str) -> None:
        print(f"fleet: {why} (`fleet orchestrator` creates the topics)", file=sys.stderr)

    return client.outcome(workflow_id, since_ms=since_ms, timeout_s=timeout, on_waiting=waiting)


def _one_workflow(
    client: FleetClient, workflow_id: str, since_ms: int | None
) -> Generator[WorkflowEvent]:
    seen = False

    def caught_up() -> None:
        what = "no terminal event yet" if seen else "no event yet (a wrong id, or not accepted yet)"
        print(f"fleet: {workflow_id}: {what}; following (Ctrl-C to stop)", file=sys.stderr)

    log = client.workflow_log()
    with closing(log.follow(workflow_id, since_ms=since_ms, on_caught_up=caught_up)) as events:
        for event in events:
            seen = True
            yield event


def _every_workflow(
    client: FleetClient, since_ms: int | None, from_beginning: bool
) -> Generator[WorkflowEvent]:
    with closing(client.event_consumer(from_beginning, since_ms=since_ms)) as consumer:
        yield from client.events(consumer)


def _print_event(event: WorkflowEvent, as_json: bool) -> None:
    if as_json:
        print(event.model_dump_json(), flush=True)
        return
    since = None if event.submitted_at_ms is None else event.at_ms - event.submitted_at_ms
    kind = event.kind.value
    echo(
        iso_ms(event.at_ms).replace("T", " "),
        event.workflow_id,
        Text(f"{kind:14}", style=KIND_STYLES.get(kind, "")),
        f"{'+' + format_duration(since) if since is not None else '-':>9}",
        describe(event),
    )
    sys.stdout.flush()


def describe(event: WorkflowEvent) -> str:
    """What a tail line says after the times: the step, or how the workflow ended."""
    parts: list[str] = []
    if event.kind is EventKind.ACCEPTED and event.workflow_name:
        parts.append(event.workflow_name)
    elif event.step_id:
        step = event.step_id + ("" if event.index is None else f"[{event.index}]")
        details = [f"attempt {event.attempt}"] if event.attempt else []
        details += [f"on {event.worker_id}"] if event.worker_id else []
        parts.append(f"step {step}" + (f" ({', '.join(details)})" if details else ""))
    if event.kind is EventKind.COMPLETED:
        output = json.dumps(event.output, separators=(",", ":"))
        if len(output) > OUTPUT_SHOWN:
            output = output[: OUTPUT_SHOWN - 1] + "… (--json: all of it)"
        parts.append(f"output {output}")
    if event.reason:  # STEP_WAITING: why the step is held back
        parts.append(f"waiting: {event.reason}")
    if event.error is not None:
        where = f" at step {event.error.step_id}" if event.error.step_id else ""
        attempt = f" (attempt {event.error.attempt})" if event.error.attempt else ""
        parts.append(f"cause {event.error.type}{where}{attempt}: {event.error.message}")
    spent = budget_text(event.budget)
    if spent:
        parts.append(spent)
    if event.usage:  # a terminal event's sum of what the handlers reported
        parts.append(f"usage: {usage.describe(event.usage)}")
    return "; ".join(parts)


def budget_text(budget: object) -> str:
    """A terminal event's budget in credits, as the CLI takes them (it travels in
    micro-credits: exact integers)."""
    if not isinstance(budget, dict):
        return ""
    limit, spent = budget.get("limit"), budget.get("spent")
    if not isinstance(limit, int) or not isinstance(spent, int) or min(limit, spent) < 0:
        return ""
    return f"budget: spent {micro_to_credits(spent)} of {micro_to_credits(limit)} credits"


@click.command(
    "cancel",
    short_help="Cancel a running workflow.",
    help="Cancel a running workflow: its tasks are abandoned, and it ends CANCELLED. With "
    "--wait, print the terminal event as JSON (exit 1 if it ended otherwise or not in time).",
)
@click.argument("workflow_id", metavar="WORKFLOW_ID", help="the workflow to cancel")
@click.option("--reason", default="", metavar="TEXT", help="why; recorded with the cancellation")
@click.option("--wait", is_flag=True, help="wait for the terminal event and print it")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60,
    metavar="SECONDS",
    help="how long --wait waits",
)
@with_broker
def cancel(settings: Settings, workflow_id: str, reason: str, wait: bool, timeout: float) -> int:
    with closing(FleetClient(settings, role="cancel")) as client:
        if not wait:
            client.cancel(workflow_id, reason)
            print(workflow_id)
            return EXIT_OK
        since_ms = _before_now()
        client.cancel(workflow_id, reason)
        print(workflow_id, file=sys.stderr)
        outcome = _outcome(client, workflow_id, since_ms, timeout)
    if outcome is None:
        print(
            f"fleet: no terminal event for {workflow_id} within {timeout:.0f} s "
            "(unknown, or it ended before the cancel)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(outcome.model_dump_json())
    return EXIT_OK if outcome.kind.value == "CANCELLED" else EXIT_FAILED
