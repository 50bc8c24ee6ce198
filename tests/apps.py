"""Handlers for the worker tests: echo, fail, hang (async and sync), all deterministic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from workers import App, PermanentError, TaskContext

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
