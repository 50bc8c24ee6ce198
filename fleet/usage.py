"""Usage and cost per task: what handlers report, summed per model.

A handler calls ``ctx.report_usage(tokens_in=..., tokens_out=..., cost=..., model=...)``
as often as it likes (once per model call is natural); the task's :class:`Meter` keeps
one running line per model, and the result carries them. The orchestrator sums the
lines of a workflow's accepted results (:func:`merge`) onto its terminal event, and its
metrics count them per capability, version and tenant.

Cost is credits as the market writes them (``0.0042``, ``"1.5"``), kept as exact integer
micro-credits (:mod:`fleet.money`): summing a thousand tasks' costs must not drift, and a
budget reconciles to the micro-credit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from fleet.messages import UsageLine
from fleet.money import MICRO, credits_to_micro, micro_to_credits

# Bounds on what one result carries: a handler looping over report_usage with a fresh
# model name per call must not grow its result record without limit.
MAX_MODELS = 32
MAX_MODEL_CHARS = 200
# Counts travel as Avro longs; a sum of many tasks' tokens stays far below this.
MAX_TOKENS = 10**15


class Meter:
    """One task attempt's usage, by model. Thread-safe: a sync handler runs in a thread,
    and an async handler may report from several of its own tasks at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[str, UsageLine] = {}

    def report(
        self,
        *,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost: object = 0,
        model: str | None = None,
    ) -> None:
        """Add to the line of ``model``; ValueError says what is wrong with an argument,
        and nothing is added then."""
        name = _model(model)
        line = UsageLine(
            model=name,
            tokens_in=_tokens("tokens_in", tokens_in),
            tokens_out=_tokens("tokens_out", tokens_out),
            cost=_cost(cost),
        )
        with self._lock:
            if name not in self._lines and len(self._lines) >= MAX_MODELS:
                raise ValueError(
                    f"report_usage: at most {MAX_MODELS} models per task, "
                    f"{model!r} would be one more"
                )
            self._lines[name] = _add(self._lines.get(name), line)

    def lines(self) -> list[UsageLine]:
        """The lines so far, by model name."""
        with self._lock:
            return [self._lines[name] for name in sorted(self._lines)]


def merge(*parts: Iterable[UsageLine]) -> list[UsageLine]:
    """Lines summed per model, by model name: a workflow's total from its tasks'."""
    summed: dict[str, UsageLine] = {}
    for part in parts:
        for line in part:
            summed[line.model] = _add(summed.get(line.model), line)
    return [summed[name] for name in sorted(summed)]


def total(lines: Iterable[UsageLine]) -> UsageLine:
    """All models together (model ""): what a summary line shows."""
    whole = UsageLine()
    for line in lines:
        whole = _add(whole, line.model_copy(update={"model": ""}))
    return whole


def describe(lines: Iterable[UsageLine]) -> str:
    """One line for people: ``1,200 tokens in, 300 out, 0.0042 credits (gpt-x, rules)``."""
    listed = list(lines)
    whole = total(listed)
    text = (
        f"{whole.tokens_in:,} tokens in, {whole.tokens_out:,} out, "
        f"{micro_to_credits(whole.cost)} credits"
    )
    models = [line.model for line in listed if line.model]
    return f"{text} ({', '.join(models)})" if models else text


def cost_in_credits(line: UsageLine) -> float:
    """For metrics only (Prometheus samples are floats); sums stay in micro-credits."""
    return line.cost / MICRO


def _add(line: UsageLine | None, more: UsageLine) -> UsageLine:
    if line is None:
        return more
    return UsageLine(
        model=line.model,
        tokens_in=line.tokens_in + more.tokens_in,
        tokens_out=line.tokens_out + more.tokens_out,
        cost=line.cost + more.cost,
    )


def _model(model: object) -> str:
    if model is None:
        return ""
    if not isinstance(model, str):
        raise ValueError(f"report_usage: model must be a string, got {type(model).__name__}")
    if len(model) > MAX_MODEL_CHARS:
        raise ValueError(f"report_usage: model name over {MAX_MODEL_CHARS} characters")
    return model


def _tokens(name: str, value: object) -> int:
    # bool is an int in Python, but True is not one token.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"report_usage: {name} must be an integer, got {value!r}")
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"report_usage: {name} must be between 0 and {MAX_TOKENS}, got {value}")
    return value


def _cost(value: object) -> int:
    try:
        return credits_to_micro(value)
    except ValueError as exc:
        raise ValueError(f"report_usage: cost: {exc}") from None
