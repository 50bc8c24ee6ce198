"""The ``fleet`` command: the command tree, and how it ends (exit status, errors).

Why click, and not typer (which is built on click) or argparse: every parameter here
has a custom parser (credits, units, dead-letter ids, durations), a metavar and a help
text, so typer's reading of type hints would save little and add a layer between the
declaration and what users see; and typer, with rich installed, prints usage errors
and help in boxes, where scripts and tests need plain, stable lines. click's
decorators say everything in one place (name, type, default, help), it renders help
with the defaults shown and refuses bad values as one usage error (exit 2) naming the
argument, positional arguments take help text (click 8.5), and it is typed for mypy's
strict mode. argparse needed a hand-written dispatcher and left arguments undescribed.

Settings are built from the environment when a command runs (``--help`` needs none),
and the broker is looked for once (``fleetctl.commands.params.connected``); each
command group lives in :mod:`fleetctl.commands`. Errors the user can act on end as one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import faulthandler
import gc
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from fleet.errors import FleetError, SpecError
from fleetctl.commands import EXIT_ERROR, EXIT_FAILED, EXIT_OK
from fleetctl.commands.agents import agents
from fleetctl.commands.breakers import breakers
from fleetctl.commands.dlq import dlq
from fleetctl.commands.kafka import kafka, topics
from fleetctl.commands.market import budget, market
from fleetctl.commands.params import InOrder, parse_top_up, parse_units
from fleetctl.commands.processes import demo, orchestrator, worker
from fleetctl.commands.status import status
from fleetctl.commands.workflows import cancel, submit, tail

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_OK",
    "Invocation",
    "fleet",
    "main",
    "parse_top_up",
    "parse_units",
    "resolve",
]

HELP = """\
fleet runs fleets of AI agents on Apache Kafka. You write agents (Python functions
registered on an App) and workflows (YAML: steps, the capability each needs, and how
outputs flow into inputs). An orchestrator turns each submitted workflow into tasks,
worker pools run your agents on them, and every step is an event on Kafka that you
can follow, and that survives any process being killed.

\b
Start here, in this order:
  fleet demo                        see it work end to end (about a minute)
  fleet kafka start                 a local Kafka broker for development
  fleet topics apply                create the topics
  fleet orchestrator                run an orchestrator (leave it running)
  fleet worker --app myagents:app   run your agents from myagents.py (leave it running)
  fleet agents                      which agents are alive, how loaded, how they fare
  fleet submit flow.yaml --wait     submit a workflow and wait for its outcome
  fleet tail --workflow ID          follow one workflow's events to its end
  fleet status ID                   where one workflow stands
  fleet cancel ID                   cancel a running workflow

Every command takes --help. The broker is KAFKA_BOOTSTRAP_SERVERS, else the local one
(`fleet kafka start`); FLEET_TOPIC_PREFIX keeps environments apart on one cluster.
Exit status: 0 done, 1 failed (a workflow failed, nothing found), 2 a usage error or
invalid input (nothing was sent).
"""


@click.group(
    "fleet",
    cls=InOrder,
    help=HELP,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "show_default": True,
        "max_content_width": 100,
    },
)
def fleet() -> None:
    pass


for _command in (
    demo,
    kafka,
    topics,
    orchestrator,
    worker,
    agents,
    breakers,
    submit,
    tail,
    status,
    cancel,
    dlq,
    budget,
    market,
):
    fleet.add_command(_command)


@dataclass(frozen=True)
class Invocation:
    """What ``fleet ARGV`` would run: the command's path and its parameters' values."""

    path: tuple[str, ...]  # e.g. ("topics", "apply")
    params: dict[str, Any]


def resolve(argv: Sequence[str]) -> Invocation:
    """Parse ``fleet ARGV`` without running it (a usage error raises click.UsageError):
    for checking that a command written elsewhere (compose files, manifests, docs) exists
    and parses."""
    command: click.Command = fleet
    ctx: click.Context | None = None
    name, args, path = "fleet", list(argv), list[str]()
    while isinstance(command, click.Group):
        ctx = click.Context(command, info_name=name, parent=ctx)
        rest = click.Command.parse_args(command, ctx, args)  # the group's own options
        if not rest:
            return Invocation(tuple(path), ctx.params)
        found, sub, args = command.resolve_command(ctx, rest)
        if found is None or sub is None:
            raise click.UsageError(f"no such command {rest[0]!r}", ctx)
        name, command = found, sub
        path.append(found)
    return Invocation(tuple(path), command.make_context(name, args, parent=ctx).params)


def main(argv: Sequence[str] | None = None) -> int:
    # `kill -USR1 <pid>` prints every thread's stack to stderr: where a stuck process is.
    # To the process's own stderr: sys.stderr may be a stream without a file (captured).
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__ or sys.stderr, all_threads=True)
    try:
        return _run(sys.argv[1:] if argv is None else list(argv))
    finally:
        # Every command closes its Kafka clients. One that outlived its owner in a
        # reference cycle is collected here, while the broker is most likely still up,
        # not somewhere in the interpreter's exit: destroying a librdkafka client after
        # its broker is gone can hang for good (the demo did, for minutes).
        gc.collect()


def _run(args: list[str]) -> int:
    try:
        result = fleet.main(args, prog_name="fleet", standalone_mode=False)
    except click.ClickException as exc:  # a usage error: click says which argument, and why
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C
        return EXIT_FAILED
    except SpecError as exc:
        print(f"fleet: invalid workflow: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_FAILED
    # A command returns its exit status; --help and groups shown return none (or 0).
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
