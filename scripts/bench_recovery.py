"""The benchmark's recovery section: under a steady load, kill -9 the group member that
owns half of the 6 partitions, and time how long the survivor takes to serve them.

Rows: a raw consumer group (two plain relay processes: the floor Kafka itself sets, the
session timeout), then two orchestrators per (guarantee, commit interval), and the same
with named instances (``--instance-id``) where the killed one is restarted at once under
its name, as a StatefulSet does: its replacement fences the dead one's transaction and
rejoins as the same static member, so the survivor never takes over. Each run uses
fresh topics and processes, and every process it starts is gone when it ends.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

from bench_common import (
    FleetLoad,
    Load,
    PacedRun,
    RawLoad,
    fresh_topics,
    median_max,
    paced,
    raw_topics,
    spawn,
)

from fleet.kafka.client import FleetClient
from fleet.settings import Settings
from fleet.topology import Topics
from fleetctl.supervisor import Supervisor

KILL_AT_S = 8.0  # steady load for this long first; its last REFERENCE_S set what is normal
REFERENCE_S = 5.0
LIMIT_S = 150.0  # after the kill; a run not recovered by then is reported as such
SETTLE_S = 3.0  # keep the load on this long after the moved partitions are served again
DELAYED_MIN_S = 1.0  # slower than this (or 3x the normal median): it waited for the failover
RAW = "raw consumer group"


@dataclass
class Outcome:
    served_s: float | None  # first result on a moved partition of work sent after the kill
    drained_s: float | None  # the last result the failover delayed (the backlog is gone)
    missing: int
    duplicates: int
    rebalanced_s: float | None = None  # the survivor's log: it got the partitions (restore begins)
    restored_s: float | None = None  # the survivor's log: their state restored


@dataclass
class _Kill:
    """The victim and what the measurement needs to know about the kill."""

    process: subprocess.Popen[bytes]
    moved: set[int]
    at: float = 0.0
    then: Callable[[], None] | None = None  # right after the kill: start a replacement

    def __call__(self) -> None:
        self.process.kill()
        self.at = time.time()
        self.process.wait(10)
        if self.then is not None:
            self.then()


def _served(run: PacedRun, kill: _Kill) -> float | None:
    served = [a.arrived for a in run.arrivals if a.partition in kill.moved and a.sent > kill.at]
    return min(served) - kill.at if served else None


def _drained(run: PacedRun, kill: _Kill) -> float | None:
    normal = [a.arrived - a.sent for a in run.arrivals if kill.at - REFERENCE_S < a.sent < kill.at]
    if not normal:
        return None
    slow = max(DELAYED_MIN_S, 3 * statistics.median(normal))
    delayed = [a.arrived for a in run.arrivals if a.arrived - a.sent > slow]
    return max(delayed) - kill.at if delayed else 0.0


def _measure(load: Load, rate: float, kill: _Kill) -> Outcome:
    def settled(run: PacedRun) -> bool:
        # Served again, a few seconds passed, and all sent until then is back: the
        # backlog the failover left is gone.
        served = _served(run, kill) if kill.at else None
        if served is None or time.time() < kill.at + served + SETTLE_S:
            return False
        arrived = {a.key for a in run.arrivals}
        backlog = (key for key, sent in run.sent_at.items() if sent < kill.at + served)
        return all(key in arrived for key in backlog)

    try:
        run = paced(load, rate, KILL_AT_S + LIMIT_S, at=[(KILL_AT_S, kill)], stop_when=settled)
    finally:
        load.close()
    return Outcome(_served(run, kill), _drained(run, kill), run.missing, run.duplicates)


def _victim(
    settings: Settings, group: str, topic: str, processes: list[subprocess.Popen[bytes]]
) -> _Kill:
    """The first member of the stable two-member ``group``, and the partitions it owns."""
    description = FleetClient(settings, role="bench").wait_for_groups([group], 2, 90)[group]
    by_pid = {p.pid: p for p in processes}
    member = description.members[0]
    pid = int(member.client_id.rsplit("-", 1)[1])  # client ids end with the process id
    moved = {tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic}
    return _Kill(by_pid[pid], moved)


def _raw(settings: Settings, rate: float, env: dict[str, str]) -> Outcome:
    source, sink = raw_topics(settings)
    group = f"{source}.relays"
    relays = [spawn(settings, "relay", source, sink, "0", "--group", group, env=env) for _ in "ab"]
    try:
        kill = _victim(settings, group, source, relays)
        return _measure(RawLoad(settings, source, sink), rate, kill)
    finally:
        for relay in relays:
            relay.kill()
            relay.wait(10)


def _platform(
    settings: Settings,
    work: Path,
    config: tuple[str, int],
    rate: float,
    env: dict[str, str],
    *,
    named: bool = False,
) -> Outcome:
    guarantee, interval_ms = config
    settings = fresh_topics(settings)
    with Supervisor(settings, work / "logs" / f"recovery-{settings.topic_prefix}") as supervisor:
        supervisor.start(
            "worker", ["worker", "--app", "workers.examples:app", "--concurrency", "16"]
        )

        def args(name: str) -> list[str]:
            stable = ["--instance-id", name] if named else []
            interval = ["--commit-interval-ms", str(interval_ms)]
            return ["orchestrator", *stable, "--guarantee", guarantee, *interval]

        children = {n: supervisor.start(f"orchestrator-{n}", args(n), env=env) for n in "ab"}
        FleetClient(settings, role="bench").wait_for_pools(["noop"], 1, timeout_s=60)
        topics = Topics(settings.topic_prefix)
        kill = _victim(
            settings,
            f"{settings.topic_prefix}orchestrator",
            topics.requests,
            [c.process for c in children.values()],
        )
        victim = next(n for n, c in children.items() if c.process is kill.process)
        taker = next(c for c in children.values() if c.process is not kill.process)
        if named:
            # The killed instance's partitions wait for its name: its replacement serves them.
            def replace() -> None:
                nonlocal taker
                taker = supervisor.start(f"orchestrator-{victim}-2", args(victim), env=env)

            kill.then = replace
        outcome = _measure(FleetLoad(settings), rate, kill)
        outcome.rebalanced_s, outcome.restored_s = _survivor_log(taker.log_path, kill.at)
    return outcome


def _survivor_log(path: Path, killed_at: float) -> tuple[float | None, float | None]:
    """From the survivor's log: seconds from the kill until its first restore after it
    began (the rebalance handed it the partitions) and until it ended."""
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
            ended = datetime.fromisoformat(entry["timestamp"]).timestamp() - killed_at
            if entry["event"] == "state restored from the changelog" and ended > 0:
                return ended - float(entry["seconds"]), ended
        except (ValueError, KeyError, TypeError):
            continue
    return None, None


def run_recovery(
    settings: Settings,
    work: Path,
    *,
    configs: list[tuple[str, int]],
    reps: int,
    rate: float,
    env: dict[str, str],
) -> dict[str, list[Outcome]]:
    """The raw group, then each (guarantee, commit interval ms), ``reps`` times over."""
    print(
        f"recovery: {reps} run(s) per row, {rate:g} workflows/s, kill -9 after {KILL_AT_S:g} s"
        + "".join(f", {k[len('FLEET_KAFKA_CLIENT_') :].lower()}={v}" for k, v in env.items()),
        flush=True,
    )
    runs: dict[str, Callable[[], Outcome]] = {RAW: lambda: _raw(settings, rate, env)}
    for config in configs:
        runs[f"{config[0]} {config[1]} ms"] = partial(_platform, settings, work, config, rate, env)
        runs[f"{config[0]} {config[1]} ms named"] = partial(
            _platform, settings, work, config, rate, env, named=True
        )
    results: dict[str, list[Outcome]] = {row: [] for row in runs}
    for rep in range(reps):
        for row, run in runs.items():
            outcome = run()
            results[row].append(outcome)
            print(f"  run {rep + 1} {row}: {outcome}", flush=True)
    return results


def _cell(values: list[float | None]) -> str:
    if not values:
        return "-"
    if any(v is None for v in values):
        return "not back"
    median, most = median_max([v for v in values if v is not None])
    return f"{median:.1f} / {most:.1f}"


def print_recovery(results: dict[str, list[Outcome]]) -> None:
    print(
        "\nrecovery after kill -9 of the member owning 3 of 6 partitions "
        "(seconds from the kill, median / max; x = ratio to the raw group's median)"
    )
    head = ("served", "x", "drained", "x", "rebalanced", "restored", "missing", "dups")
    print(f"{'':30}" + "".join(f"{h:>13}" for h in head))
    raw = results[RAW]
    raw_served = median_max([o.served_s for o in raw if o.served_s is not None] or [0.0])[0]
    raw_drained = median_max([o.drained_s for o in raw if o.drained_s is not None] or [0.0])[0]
    for row, outcomes in results.items():
        served = [o.served_s for o in outcomes]
        drained = [o.drained_s for o in outcomes]

        def ratio(values: list[float | None], reference: float) -> str:
            known = [v for v in values if v is not None]
            if not known or not reference or len(known) < len(values):
                return "-"
            return f"{median_max(known)[0] / reference:.1f}"

        cells = [
            _cell(served),
            ratio(served, raw_served),
            _cell(drained),
            ratio(drained, raw_drained),
            _cell([o.rebalanced_s for o in outcomes]) if row != RAW else "-",
            _cell([o.restored_s for o in outcomes]) if row != RAW else "-",
            str(sum(o.missing for o in outcomes)),
            str(sum(o.duplicates for o in outcomes)),
        ]
        print(f"{row:30}" + "".join(f"{c:>13}" for c in cells))
