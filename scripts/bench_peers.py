"""The benchmark's peers section: Celery with Redis, on the same machine in the same run,
with the same no-op task, burst and paced as the platform's rows.

Celery lives in a venv of its own under the bench's cache (``~/.cache/fleet/bench-peers``),
made on first use with pip; the project's ``.venv`` never sees it. Redis is the system's
``redis-server`` (Debian: ``apt-get install redis-server``), started on loopback on a free
port with an append-only file synced every second (Kafka does not sync each record
either), and stopped at the end. Three processes: Redis, a real ``celery worker`` (the
platform worker's concurrency, threads pool by default) and a client that submits with
``apply_async`` and sees each result through Celery's own Redis result consumer (the
pub/sub path ``AsyncResult.get`` uses): latency is submit -> result seen by the client.

This module also runs inside Celery's venv (``worker`` and ``client`` below), which has
no Kafka client and none of the project: it imports only the standard library at the
top, and Celery inside the functions that run there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CELERY_REQUIREMENT = "celery[redis]==5.5.3"
CLIENT_TIMEOUT_S = 300  # the client's own deadlines sum to less: it is killed past this
COLLECT_TIMEOUT_S = 180  # as the platform's collector
DRAIN_S = 30.0  # after a paced run, as bench_common.paced
# The goals: burst throughput at least 3x Celery's, paced p50 within 10x.
GOAL_THROUGHPUT_X = 3.0
GOAL_PACED_P50_X = 10.0


@dataclass(frozen=True)
class PeerRun:
    """What the Celery client saw: (sent, result seen) pairs, epoch seconds."""

    start: float  # the burst's first submission
    submitted: float  # its last: one synchronous apply_async each, this is Celery's pace
    burst: list[tuple[float, float]]
    paced: list[tuple[float, float]]
    paced_sent: int
    label: str  # e.g. "Celery 5.5.3 + Redis 7.0.15, threads x16"


def peer_venv(cache: Path) -> Path:
    """Celery's interpreter, in a venv made once per requirement under ``cache``."""
    home = cache / CELERY_REQUIREMENT.replace("[", "-").replace("]", "").replace("==", "-")
    python = home / "bin" / "python"
    stamp = home / ".installed"
    if not stamp.exists():
        print(f"peers: installing {CELERY_REQUIREMENT} into {home}", flush=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(home)], check=True)
            subprocess.run([*pip, CELERY_REQUIREMENT], check=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise SystemExit(
                f"peers: could not install {CELERY_REQUIREMENT} into {home} ({exc}); it "
                "needs PyPI once, or leave out the peers section (--sections ...)"
            ) from exc
        stamp.write_text(CELERY_REQUIREMENT)
    return python


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise SystemExit(
            "peers: redis-server not found. Install it (Debian/Ubuntu: "
            "`sudo apt-get install redis-server`; macOS: `brew install redis`), or leave "
            "out the peers section (--sections ...)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def _process(args: list[str], log: Path, **popen: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A child in a session of its own (a prefork worker's children included), its
    output in ``log``; terminated on the way out, killed if it lingers."""
    with log.open("wb") as out:
        child = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    try:
        yield child
    finally:
        _end_session(child)


def _end_session(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's session (a worker shuts down warm), SIGKILL if it lingers,
    and SIGKILL to whatever is left in it (a prefork worker's pool children)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        try:
            child.wait(10)
            break
        except subprocess.TimeoutExpired:
            continue
    with suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


@contextmanager
def redis(work: Path) -> Iterator[int]:
    """A Redis on loopback on a free port, for this run only; yields the port."""
    port = _free_port()
    data = work / f"redis-{port}"
    data.mkdir()
    args = [redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data)]
    args += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
    with _process(args, work / f"redis-{port}.log"):
        deadline = time.monotonic() + 15
        while not _pong(port):
            if time.monotonic() > deadline:
                raise SystemExit(f"peers: Redis did not answer on port {port}; see {data}.log")
            time.sleep(0.1)
        yield port


def run_celery(
    count: int,
    paced_load: tuple[float, float],
    work: Path,
    *,
    cache: Path,
    concurrency: int,
    pool: str,
) -> PeerRun:
    """Celery's burst of ``count`` no-op tasks, then its paced load (rate, seconds)."""
    python = peer_venv(cache)
    with redis(work) as port:
        common = ["--port", str(port)]
        worker = [str(python), __file__, "worker", *common, "--pool", pool]
        worker += ["--concurrency", str(concurrency)]
        out = work / f"celery-{port}.json"
        client = [str(python), __file__, "client", *common, "--count", str(count)]
        client += ["--rate", str(paced_load[0]), "--seconds", str(paced_load[1]), "--out", str(out)]
        worker_log = work / f"celery-worker-{port}.log"
        with _process(worker, worker_log):
            try:
                subprocess.run(client, check=True, timeout=CLIENT_TIMEOUT_S)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                tail = worker_log.read_text(errors="replace").splitlines()[-20:]
                lines = [f"peers: Celery's client: {exc}; its worker's log:", *tail]
                raise SystemExit("\n".join(lines)) from exc
        data = json.loads(out.read_text())
    version = subprocess.run(
        [redis_server(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    redis_version = next((w[2:] for w in version.split() if w.startswith("v=")), "?")
    return PeerRun(
        start=data["start"],
        submitted=data["submitted"],
        burst=[(sent, seen) for sent, seen in data["burst"]],
        paced=[(sent, seen) for sent, seen in data["paced"]],
        paced_sent=data["paced_sent"],
        label=f"Celery {data['celery']} + Redis {redis_version}, {pool} x{concurrency}",
    )


def ratio_rows(platform: Mapping[str, float], celery: Mapping[str, float]) -> dict[str, float]:
    """Platform / Celery for each figure both have (throughput: higher is better for
    the platform; latencies: lower is)."""
    keys = ("tasks_per_s", "p50_ms", "p99_ms", "paced_p50_ms", "paced_p99_ms")
    return {k: platform[k] / celery[k] for k in keys if k in platform and celery.get(k)}


def goal_lines(ratios: Mapping[str, float]) -> list[str]:
    """The issue's two goals against the measured ratios, with the distance if unmet."""
    lines = []
    burst = ratios["tasks_per_s"]
    if burst >= GOAL_THROUGHPUT_X:
        lines.append(f"burst throughput {burst:.2f}x Celery's: goal >= {GOAL_THROUGHPUT_X:g}x met")
    else:
        lines.append(
            f"burst throughput {burst:.2f}x Celery's: goal >= {GOAL_THROUGHPUT_X:g}x NOT met, "
            f"{GOAL_THROUGHPUT_X / burst:.2f}x short"
        )
    paced = ratios["paced_p50_ms"]
    if paced <= GOAL_PACED_P50_X:
        lines.append(f"paced p50 {paced:.2f}x Celery's: goal <= {GOAL_PACED_P50_X:g}x met")
    else:
        lines.append(
            f"paced p50 {paced:.2f}x Celery's: goal <= {GOAL_PACED_P50_X:g}x NOT met, "
            f"{paced / GOAL_PACED_P50_X:.2f}x over"
        )
    return lines


def print_peers(
    platform: Mapping[str, float], celery: Mapping[str, float], label: str, load: str
) -> None:
    print(f"\npeers: {load}; {label}")
    heads = ("tasks/s", "p50 ms", "p99 ms", "paced p50", "paced p99")
    keys = ("tasks_per_s", "p50_ms", "p99_ms", "paced_p50_ms", "paced_p99_ms")
    print(f"{'':26}" + "".join(f"{h:>11}" for h in heads))
    for name, row in (("platform (exactly_once)", platform), ("Celery + Redis", celery)):
        print(f"{name:26}" + "".join(f"{row[k]:>11.0f}" for k in keys))
    ratios = ratio_rows(platform, celery)
    print(f"{'platform / Celery':26}" + "".join(f"{ratios[k]:>11.2f}" for k in keys))
    for line in goal_lines(ratios):
        print(f"  {line}")
    if "submit_per_s" in celery:
        print(
            f"  Celery's client submitted the burst at {celery['submit_per_s']:.0f}/s "
            "(one synchronous apply_async each): its throughput cannot exceed that"
        )


# --- What runs inside Celery's venv -------------------------------------------------


def _celery_app(port: int) -> Any:
    from celery import Celery  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

    url = f"redis://127.0.0.1:{port}"
    app = Celery("bench", broker=f"{url}/0", backend=f"{url}/1")
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )

    @app.task(name="bench.noop")  # type: ignore[untyped-decorator, unused-ignore]
    def noop() -> None:
        """The platform's noop capability does nothing either."""

    return app


def _worker(port: int, pool: str, concurrency: int) -> None:
    """A real ``celery worker``: the same command line code path as the ``celery`` tool."""
    argv = ["worker", f"--pool={pool}", f"--concurrency={concurrency}", "--loglevel=WARNING"]
    _celery_app(port).worker_main([*argv, "--without-gossip", "--without-mingle"])


class _Seen:
    """Results as Celery's Redis result consumer reads them from pub/sub."""

    def __init__(self, app: Any) -> None:
        self.consumer = app.backend.result_consumer
        self.consumer.on_message = self._on_message
        self.at: dict[str, float] = {}

    def _on_message(self, meta: dict[str, Any]) -> None:
        if meta.get("status") == "SUCCESS":
            self.at[meta["task_id"]] = time.time()

    def drain(self, wait_s: float) -> None:
        """Wait up to ``wait_s`` for one message, then read what is already there (one
        ``drain_events`` reads one message)."""
        self.consumer.drain_events(timeout=wait_s)
        pubsub = self.consumer._pubsub
        while pubsub is not None and pubsub.connection and pubsub.connection.can_read(0):
            self.consumer.drain_events(timeout=0)

    def wait_for(self, keys: Mapping[str, float], timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while any(k not in self.at for k in keys) and time.time() < deadline:
            self.drain(0.2)


def _client(port: int, count: int, rate: float, seconds: float, out: Path) -> None:
    import celery  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415

    app = _celery_app(port)
    noop = app.tasks["bench.noop"]
    seen = _Seen(app)
    # Celery 5.5 unsubscribes from a task's result channel when its AsyncResult is
    # collected: held until the run ends, as a caller waiting on them would.
    held: list[Any] = []

    def send() -> tuple[str, float]:
        task_id = str(uuid.uuid4())
        sent = time.time()
        held.append(noop.apply_async(task_id=task_id))
        return task_id, sent

    warm = dict([send()])  # pays for connections and the worker's start
    seen.wait_for(warm, 60)
    if not all(k in seen.at for k in warm):
        raise SystemExit("celery client: the warm-up task did not come back within 60 s")
    time.sleep(1)
    burst: dict[str, float] = {}
    start = time.time()
    for i in range(count):
        task_id, sent = send()
        burst[task_id] = sent
        if i % 100 == 99:  # read results as they come, not after the last submission
            seen.drain(0)
    submitted = time.time()
    seen.wait_for(burst, COLLECT_TIMEOUT_S)
    time.sleep(1)
    paced: dict[str, float] = {}
    paced_start = time.time()
    while (elapsed := time.time() - paced_start) < seconds:
        while len(paced) < rate * elapsed:
            task_id, sent = send()
            paced[task_id] = sent
        seen.drain(0.01)
    seen.wait_for(paced, DRAIN_S)
    pairs = {
        name: [(sent, seen.at[k]) for k, sent in sent_at.items() if k in seen.at]
        for name, sent_at in (("burst", burst), ("paced", paced))
    }
    result = {"celery": celery.__version__, "start": start, "submitted": submitted}
    result |= {"paced_sent": len(paced)} | pairs
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description="Celery's side of the peers section")
    parser.add_argument("role", choices=("worker", "client"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool", default="threads")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.role == "worker":
        _worker(args.port, args.pool, args.concurrency)
    else:
        _client(args.port, args.count, args.rate, args.seconds, args.out)


if __name__ == "__main__":
    main()
