"""Example agents for the demo, the benchmark and the tests: real work, no model, no network.

Every handler is deterministic (same payload, same output) and honours two optional
payload fields: ``delay_ms`` simulates an agent's latency (``asyncio.sleep`` in async
handlers, so a slow task holds no thread), and ``fail`` (``"permanent"`` or
``"retryable"``) makes it raise, to show how failures travel. Run them with
``fleet worker --app workers.examples:app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import threading
import time
from collections import Counter
from typing import Any

from fleet.app import App, TaskContext
from fleet.errors import PermanentError, RetryableError
from fleet.money import micro_to_credits
from workers.leases import LeaseGuard

app = App()

# Checked in this order; the category with the most keyword hits wins, ties go first.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "disk": ("disk", "filesystem", "inode", "volume", "storage"),
    "memory": ("memory", "oom", "swap", "heap"),
    "cpu": ("cpu", "load average", "throttl"),
    "network": ("network", "packet", "dns", "unreachable", "latency", "connection"),
    "database": ("database", "replication", "deadlock", "query", "postgres", "mysql"),
    "security": ("unauthorized", "breach", "intrusion", "malware", "cve", "brute force"),
}
# Highest first: the first level with a matching word is the severity.
SEVERITIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("critical", ("full", "down", "outage", "critical", "breach", "data loss", "unreachable")),
    ("high", ("error", "fail", "oom", "exhausted", "high", "intrusion")),
    ("medium", ("slow", "warn", "degraded", "latency", "retry")),
)
SEVERITY_ORDER = ("low", "medium", "high", "critical")
TEAMS = ("platform", "storage", "payments", "search", "identity", "data")

HOST_RE = re.compile(r"\b[a-z][a-z0-9]*(?:-[a-z0-9]+)*-\d+\b")
URL_RE = re.compile(r"https?://[^\s<>\"']+")
EMAIL_RE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Not part of a word, a host name (web-1) or a dotted version (1.2.3); units may follow.
NUMBER_RE = re.compile(r"(?<![\w.-])-?\d+(?:\.\d+)?(?!\.?\d)")


def _fail_if_asked(payload: Any) -> None:
    if not isinstance(payload, dict):
        return
    if payload.get("fail") == "permanent":
        raise PermanentError("asked to fail permanently")
    if payload.get("fail") == "retryable":
        raise RetryableError("asked to fail, retryably")


def _delay_s(payload: Any) -> float:
    delay = payload.get("delay_ms", 0) if isinstance(payload, dict) else 0
    return max(0.0, float(delay)) / 1000 if isinstance(delay, int | float) else 0.0


async def _prelude(payload: Any) -> None:
    await asyncio.sleep(_delay_s(payload))
    _fail_if_asked(payload)


def _prelude_sync(payload: Any) -> None:
    time.sleep(_delay_s(payload))
    _fail_if_asked(payload)


def _text(payload: Any, key: str = "text") -> str:
    value = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(value, str):
        # Retrying the same payload cannot help: fail the step at once.
        raise PermanentError(f"payload needs a string field {key!r}")
    return value


def hosts_in(text: str) -> list[str]:
    """Host names like ``web-1`` or ``db-eu-02``, in order of first appearance."""
    return list(dict.fromkeys(HOST_RE.findall(text.lower())))


@app.capability("classify")
async def classify(payload: dict[str, Any]) -> dict[str, Any]:
    """Alert text -> category, severity and the hosts it names (rule-based)."""
    await _prelude(payload)
    text = _text(payload).lower()
    hits = {cat: sum(text.count(word) for word in words) for cat, words in CATEGORIES.items()}
    best = max(hits, key=lambda cat: hits[cat])  # max keeps the first of equal counts
    severity = next(
        (level for level, words in SEVERITIES if any(word in text for word in words)), "low"
    )
    return {
        "category": best if hits[best] else "other",
        "severity": severity,
        "hosts": hosts_in(text),
    }


def _stable_hash(text: str) -> int:
    # Not hash(): that is salted per process, and every replica must give the same facts.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


@app.capability("lookup")
def lookup(payload: dict[str, Any]) -> dict[str, Any]:
    """Facts about a host, derived from its name alone (a stand-in for a CMDB call)."""
    _prelude_sync(payload)
    host = _text(payload, "host").strip().lower()
    digest = _stable_hash(host)
    return {
        "host": host,
        "rack": f"rack-{digest % 16 + 1:02d}",
        "owner": TEAMS[(digest >> 8) % len(TEAMS)],
        "uptime_days": (digest >> 16) % 365,
    }


@app.capability("summarize", version="1.1.0")
async def summarize(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Findings (a list of dicts or strings) or a text -> counts and a one-line summary."""
    await _prelude(payload)
    findings = payload.get("findings") if isinstance(payload, dict) else None
    if findings is None:
        summary = _summarize_text(_text(payload))
    elif not isinstance(findings, list):
        raise PermanentError("payload field 'findings' must be a list")
    else:
        summary = _summarize_findings(findings)
    ctx.report_usage(**bill(payload, summary))
    return summary


# The bill of a model call, as a stand-in for a real one (shows ctx.report_usage): about
# 4 characters of JSON per token, priced like a small model at 1 credit per million tokens
# in and 3 per million out (so 1 and 3 micro-credits per token, exact).
SUMMARY_MODEL = "rules-summarizer"


def bill(payload: Any, output: Any) -> dict[str, Any]:
    """The report_usage arguments for one summarize call on ``payload``."""
    tokens_in = len(json.dumps(payload)) // 4 + 1
    tokens_out = len(json.dumps(output)) // 4 + 1
    cost = micro_to_credits(tokens_in * 1 + tokens_out * 3)
    return {"tokens_in": tokens_in, "tokens_out": tokens_out, "cost": cost, "model": SUMMARY_MODEL}


def _summarize_findings(findings: list[Any]) -> dict[str, Any]:
    records = [f for f in findings if isinstance(f, dict)]
    counts = {
        key: dict(sorted(Counter(str(r[key]) for r in records if key in r).items()))
        for key in ("category", "severity", "owner")
    }
    hosts: list[str] = []
    for record in records:
        named = record.get("hosts", [record["host"]] if "host" in record else [])
        hosts.extend(h for h in named if isinstance(h, str))
    hosts = list(dict.fromkeys(hosts))
    known = [s for s in counts["severity"] if s in SEVERITY_ORDER]
    worst = max(known, key=SEVERITY_ORDER.index) if known else None
    parts = [f"{len(findings)} finding{'s' if len(findings) != 1 else ''}"]
    parts += [", ".join(f"{n} {value}" for value, n in c.items()) for c in counts.values() if c]
    if worst:
        parts.append(f"worst {worst}")
    if hosts:
        parts.append(f"hosts {', '.join(hosts)}")
    return {
        "count": len(findings),
        **{key: c for key, c in counts.items() if c},
        "worst": worst,
        "hosts": hosts,
        "summary": "; ".join(parts),
    }


def _summarize_text(text: str) -> dict[str, Any]:
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s.strip()]
    words = text.split()
    first = sentences[0] if sentences else ""
    return {
        "count": len(sentences),
        "words": len(words),
        "summary": first if len(first) <= 120 else first[:117] + "...",
    }


@app.capability("extract")
def extract(payload: dict[str, Any]) -> dict[str, Any]:
    """Numbers, e-mail addresses and URLs found in a text."""
    _prelude_sync(payload)
    text = _text(payload)
    urls = [u.rstrip(".,;:!?)") for u in URL_RE.findall(text)]
    emails = EMAIL_RE.findall(text)
    rest = EMAIL_RE.sub(" ", URL_RE.sub(" ", text))  # no digits of addresses in the numbers
    numbers = [float(n) if "." in n else int(n) for n in NUMBER_RE.findall(rest)]
    return {"numbers": numbers, "emails": emails, "urls": urls}


@app.capability("score")
def score(payload: dict[str, Any]) -> dict[str, Any]:
    """A logistic score in [0, 1] of weighted numeric features (weights default to 1)."""
    _prelude_sync(payload)
    features = payload.get("features")
    weights = payload.get("weights") or {}
    if not isinstance(features, dict) or not isinstance(weights, dict):
        raise PermanentError("payload needs 'features' (and optional 'weights') objects")
    raw = payload.get("bias", 0.0)
    if not isinstance(raw, int | float):
        raise PermanentError("'bias' must be a number")
    for name, value in sorted(features.items()):
        weight = weights.get(name, 1.0)
        if not all(isinstance(v, int | float) for v in (value, weight)):
            raise PermanentError(f"feature {name!r} and its weight must be numbers")
        raw += float(weight) * float(value)
    probability = 1 / (1 + math.exp(-max(-60.0, min(60.0, raw))))
    band = "high" if probability >= 0.8 else "medium" if probability >= 0.5 else "low"
    return {"score": round(probability, 4), "raw": round(raw, 4), "band": band}


@app.capability("text.wordcount")
def wordcount(payload: dict[str, Any]) -> dict[str, Any]:
    _prelude_sync(payload)
    return {"words": len(payload["text"].split())}


@app.capability("text.flaky")
async def flaky(payload: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
    """Fails its first attempt (retryably) and succeeds after: shows step retries."""
    await _prelude(payload)
    if ctx.attempt == 1:
        raise RetryableError("try again")
    return {"ok": True}


# What guards the GPU slots in this process: every use checks the lease's fencing token
# (a real GPU server would hold this check itself, for every client).
_GPU = LeaseGuard("gpu")


@app.capability("render")
async def render(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Holds one GPU slot (the step declares ``resources: {gpu: 1}``) for ``delay_ms``.

    Returns the unit, the lease's token and price, and when it held the slot, so a
    run can check afterwards that no unit was ever held twice at once."""
    lease = ctx.lease("gpu")
    if lease is None:
        raise PermanentError("render needs a GPU lease: give its step resources: {gpu: 1}")
    started_ms = int(time.time() * 1000)
    with _GPU.holding(lease, started_ms):
        await _prelude(payload)
    return {
        "units": lease.units,
        "token": [lease.epoch, lease.seq],
        "unit_price": lease.unit_price,
        "held_ms": [started_ms, int(time.time() * 1000)],
    }


# What guards every pool in this process, one guard per pool, made on first use: the
# market fault run's resource side (tests/fault/market.py), which checks afterwards that
# no unit was ever held by two leases at once and no stale token was accepted.
_POOLS: dict[str, LeaseGuard] = {}
_POOLS_LOCK = threading.Lock()


def _pool_guard(pool: str) -> LeaseGuard:
    with _POOLS_LOCK:
        guard = _POOLS.get(pool)
        if guard is None:
            guard = _POOLS[pool] = LeaseGuard(pool)
        return guard


@app.capability("hold")
async def hold(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    """Holds every lease the task got (its step's ``resources``) for ``delay_ms``.

    Each lease is admitted by its pool's guard first, in pool order; a stale or expired
    token raises :class:`~workers.leases.StaleLease` (the task fails, retryably) and
    nothing is held. Returns, per pool, the units, the token, the unit price and when the
    units were held, with this process's pid and the payload's ``tag``: evidence a run
    checks against the capacity and the tokens afterwards.
    """
    if not ctx.leases:
        raise PermanentError("hold needs leases: give its step resources, e.g. {p1: 1}")
    leases = sorted(ctx.leases, key=lambda lease: lease.resource)
    started_ms = int(time.time() * 1000)
    with contextlib.ExitStack() as held:
        for lease in leases:
            held.enter_context(_pool_guard(lease.resource).holding(lease, started_ms))
        await _prelude(payload)
        ended_ms = int(time.time() * 1000)
    return {
        "pid": os.getpid(),
        "tag": payload.get("tag") if isinstance(payload, dict) else None,
        "leases": {
            lease.resource: {
                "units": lease.units,
                "token": [lease.epoch, lease.seq],
                "unit_price": lease.unit_price,
                "held_ms": [started_ms, ended_ms],
            }
            for lease in leases
        },
    }


@app.capability("noop")
async def noop(payload: Any) -> Any:
    """Returns its payload unchanged (the benchmark's agent)."""
    await _prelude(payload)
    return payload
