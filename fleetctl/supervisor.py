"""Run ``fleet`` subcommands as separate child processes (demo, tests, benchmarks).

Each child is a real process with its own Kafka clients, as in production; its output
goes to a log file so a failure can be read afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import structlog

from fleet.settings import Settings

log = structlog.get_logger()


def child_env(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child see the same settings as this process."""
    env = dict(os.environ)
    env.update(
        {
            "FLEET_TOPIC_PREFIX": settings.topic_prefix,
            "FLEET_TOPOLOGY": str(settings.topology_file),
            "FLEET_MARKET_FILE": str(settings.market_file),
            "FLEET_SCHEMAS": str(settings.schemas_dir),
            "FLEET_KAFKA_HOME": str(settings.kafka_run_dir),
            "FLEET_KAFKA_CACHE": str(settings.kafka_cache_dir),
            "FLEET_LOG_FORMAT": "json",
        }
    )
    if settings.bootstrap_servers:
        env["KAFKA_BOOTSTRAP_SERVERS"] = settings.bootstrap_servers
    env.update(extra or {})
    return env


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Supervisor:
    """Starts children and guarantees they are gone when the ``with`` block ends."""

    settings: Settings
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        profile_to: Path | None = None,
    ) -> Child:
        """Start ``fleet <args>``; with ``profile_to``, under cProfile (written at clean exit)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        profiler = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
        argv = [sys.executable, *profiler, "-m", "fleetctl.cli", *args]
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(self.settings, env),
            )
        child = Child(name, argv, log_path, process)
        self.children.append(child)
        log.debug("started child", name=name, pid=process.pid)
        return child

    def stop(self, child: Child, grace_s: float = 15.0, sig: int = signal.SIGTERM) -> int:
        if child.alive():
            child.process.send_signal(sig)
            try:
                child.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("child ignored SIGTERM; killing it", name=child.name)
                _kill_with_stacks(child)
        return child.process.returncode

    def stop_all(self, grace_s: float = 15.0) -> dict[str, int]:
        for child in self.children:
            if child.alive():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        codes = {}
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child ignored SIGTERM; killing it", name=child.name)
                _kill_with_stacks(child)
            codes[child.name] = child.process.returncode
        return codes

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive()]

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def _kill_with_stacks(child: Child) -> None:
    """SIGKILL a stuck child, after SIGUSR1 makes it dump every thread's stack to its log
    (``fleet`` registers faulthandler on it): the evidence of where it was stuck."""
    with contextlib.suppress(ProcessLookupError):
        child.process.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    child.process.kill()
    child.process.wait(5)
