"""Handlers for the worker tests: echo, fail, hang (async and sync), all deterministic."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fleet import App, PermanentError, TaskContext

app = App()


@app.capability("t.echo")
async def echo(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Sleeps ``delay_ms`` (if given) and returns its payload with the attempt seen."""
    if isinstance(payload, dict) and "delay_ms" in payload:
        await asyncio.sleep(payload["delay_ms"] / 1000)
    return {"echo": payload, "attempt": ctx.attempt}


@app.capability("t.sync-echo")
def sync_echo(payload: Any) -> dict[str, Any]:
    if isinstance(payload, dict) and "delay_ms" in payload:
        time.sleep(payload["delay_ms"] / 1000)
    return {"echo": payload}


@app.capability("t.boom")
def boom(payload: Any) -> None:
    if isinstance(payload, dict) and payload.get("permanent"):
        raise PermanentError("no point retrying")
    raise ValueError(f"boom: {payload}")


@app.capability("t.hang")
async def hang(payload: Any) -> None:
    await asyncio.sleep(3600)


@app.capability("t.hang-sync")
def hang_sync(payload: Any) -> None:
    time.sleep(payload.get("sleep_s", 30) if isinstance(payload, dict) else 30)


# -- cancellation: each handler records what it saw in the file ``payload["marker"]`` ---


def _mark(payload: dict[str, Any], line: str) -> None:
    with open(payload["marker"], "a") as marker:
        marker.write(line + "\n")


@app.capability("t.cancel-async")
async def cancel_async(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Sleeps ``sleep_s`` (120) on attempts up to ``hang_attempts`` (all), recording
    ``attempt N started``, then ``... CancelledError`` or ``... completed``."""
    _mark(payload, f"attempt {ctx.attempt} started")
    try:
        if ctx.attempt <= payload.get("hang_attempts", 1_000):
            await asyncio.sleep(payload.get("sleep_s", 120))
    except asyncio.CancelledError:
        _mark(payload, f"attempt {ctx.attempt} CancelledError")
        raise
    _mark(payload, f"attempt {ctx.attempt} completed")
    return {"attempt": ctx.attempt}


@app.capability("t.cancel-sync")
def cancel_sync(payload: dict[str, Any], ctx: TaskContext) -> str:
    """Works ``sleep_s`` (120) in small steps, returning early once ``ctx.cancelled``."""
    _mark(payload, f"attempt {ctx.attempt} started")
    stop = time.monotonic() + payload.get("sleep_s", 120)
    while time.monotonic() < stop:
        if ctx.cancelled:
            _mark(payload, f"attempt {ctx.attempt} saw ctx.cancelled")
            return "stopped early"
        time.sleep(0.05)
    _mark(payload, f"attempt {ctx.attempt} completed")
    return "ran to the end"


@app.capability("t.fragile", version="1.0.0")
def fragile(payload: dict[str, Any]) -> dict[str, Any]:
    """Fails while the file ``broken_while`` names exists: a capability that goes bad and
    recovers when the test says (the circuit breaker tests)."""
    if Path(payload["broken_while"]).exists():
        raise RuntimeError("the downstream model is failing")
    return {"ok": True}
