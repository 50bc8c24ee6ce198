"""The broker's JVMs as processes: spawned detached, found by pid and command line, stopped.

Plain process control, nothing Kafka-specific: a detached spawn, "is this pid alive" and
"what does it run", signal-and-wait, and the file lock that serializes operations on a
run dir across processes.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def spawn_detached(argv: list[str], cwd: Path, console_file: Path) -> int:
    """Run argv in the background of a throwaway shell, in a new session.

    The shell exits at once, so the broker is never our child: it outlives the CLI,
    leaves no zombie for us to reap and no Popen object to warn on garbage collection.
    """
    script = 'log=$1; shift; "$@" >"$log" 2>&1 </dev/null & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(console_file), *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
        start_new_session=True,
    )
    return int(out.stdout.strip())


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> list[str]:
    """The argv of a process, or [] if it is gone (or a zombie)."""
    proc = Path(f"/proc/{pid}/cmdline")
    if Path("/proc/self").exists():
        try:
            return proc.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            return []
    # No /proc (macOS): ps prints the command line joined by spaces, good enough here.
    out = subprocess.run(
        ["ps", "-ww", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return out.stdout.split()


def signal_and_wait(
    pids: Iterable[int], sig: signal.Signals, wait_s: float, *, alive: Callable[[int], bool]
) -> list[int]:
    """Send ``sig`` to every pid; return those still ``alive`` after ``wait_s``."""
    pids = list(pids)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + wait_s
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


@contextmanager
def flock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def since(started: float) -> float:
    return round(time.monotonic() - started, 1)
