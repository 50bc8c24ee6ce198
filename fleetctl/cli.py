"""The ``fleet`` command: parse, build the settings from the environment, dispatch.

Settings are built once here and the broker is looked for once (``connected``); each
command group lives in :mod:`fleetctl.commands`. Errors the user can act on end as one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import os
import signal
import sys
from collections.abc import Sequence

from fleet.errors import FleetError, SpecError
from fleet.logs import configure_logging
from fleet.settings import Settings
from fleetctl.commands import EXIT_ERROR, EXIT_FAILED, EXIT_OK, dlq, kafka, market, processes
from fleetctl.commands import workflows as wf
from fleetctl.commands.parser import build_parser, parse_top_up, parse_units

__all__ = [
    "EXIT_ERROR",
    "EXIT_FAILED",
    "EXIT_OK",
    "build_parser",
    "main",
    "parse_top_up",
    "parse_units",
]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `kill -USR1 <pid>` prints every thread's stack to stderr: where a stuck process is.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    try:
        return _run(args)
    finally:
        # Every command closes its Kafka clients. One that outlived its owner in a
        # reference cycle is collected here, while the broker is most likely still up,
        # not somewhere in the interpreter's exit: destroying a librdkafka client after
        # its broker is gone can hang for good (the demo did, for minutes).
        gc.collect()


def _run(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env(os.environ)
        configure_logging(settings)
        return _dispatch(args, settings)
    except SpecError as exc:
        print(f"fleet: invalid workflow: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:  # noqa: PLR0911
    command: str = args.command
    if command == "kafka":
        return kafka.kafka(args.action, settings)
    if command == "demo":
        return processes.demo(args, settings)
    if command == "submit":
        return wf.submit(args, settings)  # checks the spec before it looks for a broker
    # The one place a broker is looked for: every process below is handed its address.
    settings = kafka.connected(settings)
    if command == "topics":
        return kafka.topics_apply(settings, args.capability)
    if command == "tail":
        return wf.tail(args, settings)
    if command == "cancel":
        return wf.cancel(args, settings)
    if command == "dlq":
        return dlq.dlq(args, settings)
    if command == "budget":
        return market.top_up(args, settings)
    if command == "market":
        return market.market(args, settings)
    if command == "orchestrator":
        return processes.orchestrator(args, settings)
    if command == "worker":
        return processes.worker(args, settings)
    raise AssertionError(f"unhandled command {command}")


if __name__ == "__main__":
    sys.exit(main())
