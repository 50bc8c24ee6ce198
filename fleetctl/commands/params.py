"""What the ``fleet`` commands share: argument types, options used by several commands,
the decorators that hand a command its settings, and ``connected``: the one place a
broker is looked for.

A type is a parse function that returns the value or raises ValueError with the reason;
:class:`Parsed` makes it a click type, so a bad value is a usage error (exit 2) that
names the argument and says why, before anything is sent.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import click

from fleet.logs import configure_logging
from fleet.settings import Settings
from fleetctl.dlq import parse_id, parse_since
from fleetctl.localkafka import resolve_bootstrap
from orchestrator.market.policy import UNITS_MAX, credits_to_micro

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


class InOrder(click.Group):
    """A group that lists its commands in the order they were added (the order a
    newcomer uses them), not A-Z."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


class Parsed(click.ParamType[T, Any]):
    """A click type from ``parse(text)``; its ValueError message reaches the user as it is."""

    def __init__(self, name: str, parse: Callable[[str], T]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> T:
        if not isinstance(value, str):
            return cast(T, value)  # a default, or a value converted once already
        try:
            return self._parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def parse_top_up(text: str) -> int:
    """AMOUNT of ``fleet budget top-up``: credits as exact micro-credits, above 0."""
    micro = credits_to_micro(text)  # text, not float(text): "0.1" stays exactly 100000
    if micro == 0:
        raise ValueError("a top-up must be above 0 credits")
    return micro


def parse_units(text: str) -> int:
    """UNITS of ``fleet market capacity``: a whole number of units, 0 or more."""
    # Not int(text), which also takes " 3", "+3" and "3_0".
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"expected a whole number of units (0 or more), got {text!r}")
    units = int(text)
    if units > UNITS_MAX:
        raise ValueError(f"at most {UNITS_MAX} units, got {text}")
    return units


def parse_json_object(text: str) -> dict[str, Any]:
    """``--input``: a workflow's input is a JSON object (its steps refer to its fields as
    ``$.input.name``); anything else would only fail once the workflow runs."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        kind = {str: "a string", list: "an array", bool: "a boolean", type(None): "null"}
        raise ValueError(
            f'expected a JSON object such as \'{{"text": "hi"}}\', got '
            f"{kind.get(type(value), 'a number')}"
        )
    return value


def _since(text: str) -> int:
    return parse_since(text, int(time.time() * 1000))  # now: when the command runs


AMOUNT = Parsed("amount", parse_top_up)
UNITS = Parsed("units", parse_units)
LETTER_ID = Parsed("letter_id", parse_id)
SINCE = Parsed("since", _since)
JSON_OBJECT = Parsed("json_object", parse_json_object)


def connected(settings: Settings) -> Settings:
    """``settings`` with the broker to use: KAFKA_BOOTSTRAP_SERVERS, else the running
    local broker (or a ConfigError saying how to get one). The one place a broker is
    looked for: every command and process below is handed its address."""
    return settings.with_bootstrap(resolve_bootstrap(settings))


def with_settings(command: Callable[Concatenate[Settings, P], int]) -> Callable[P, int]:
    """Hand ``command`` the settings, built from the environment when it runs (not while
    parsing: ``--help`` works whatever the environment holds), with logging set up."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        settings = Settings.from_env(os.environ)
        configure_logging(settings)
        return command(settings, *args, **kwargs)

    return run


def with_broker(command: Callable[Concatenate[Settings, P], int]) -> Callable[P, int]:
    """:func:`with_settings` with the broker to use found first (``connected``)."""

    def run(settings: Settings, /, *args: P.args, **kwargs: P.kwargs) -> int:
        return command(connected(settings), *args, **kwargs)

    functools.update_wrapper(run, command)
    return with_settings(run)


def filter_options(command: F) -> F:
    """The dead-letter filters of ``dlq list`` and ``dlq redrive``."""
    for option in reversed(
        [
            click.option(
                "--since",
                type=SINCE,
                metavar="WHEN",
                help="only dead letters since then: 30s, 10m, 2h, 1d, 1w ago, or an ISO "
                "time (UTC if no offset)",
            ),
            click.option(
                "--topic",
                "topics",
                multiple=True,
                metavar="TOPIC",
                help="only dead letters from this source topic (repeatable; the topic "
                "prefix is optional)",
            ),
            click.option(
                "--error-type",
                "error_types",
                multiple=True,
                metavar="TYPE",
                help="only this error type, e.g. DecodeError (repeatable)",
            ),
        ]
    ):
        command = option(command)
    return command


def metrics_options(command: F) -> F:
    """Where ``orchestrator`` and ``worker`` serve Prometheus metrics."""
    command = click.option(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics server listens on",
    )(command)
    return click.option(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (none: no metrics server)",
    )(command)
