"""The watchdog: a separate process that cleans up if the driver dies without ``finally``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# If the driver dies without running ``finally`` (a C-level abort in librdkafka, SIGKILL,
# a CI runner killing the job), this separate process stops what the run started: the
# fleet processes carrying the run's topic prefix and the broker tagged with its run dir
# (a cluster's nodes with run_dir/node-i). The driver terminates it after its own
# clean-up. Linux only (/proc); elsewhere a no-op.
_WATCHDOG = r"""
import os, signal, sys, time
driver, prefix, run_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def read(pid, name):
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""
def driver_alive():
    stat = read(driver, "stat")
    return bool(stat) and stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")
def ours():
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (os.getpid(), driver):
            continue
        cmd = read(entry, "cmdline")
        if "fleetctl.cli" in cmd and f"FLEET_TOPIC_PREFIX={prefix}\0" in read(entry, "environ"):
            found.append(int(entry))
        elif any(f"-Dfleet.run.dir={run_dir}{end}" in cmd for end in ("\0", "/node-")):
            found.append(int(entry))
    return found
if not os.path.isdir("/proc"):
    sys.exit(0)
while driver_alive():
    time.sleep(1)
for sig in (signal.SIGCONT, signal.SIGTERM):
    for pid in ours():
        try:
            os.kill(pid, sig)
        except OSError:
            pass
deadline = time.monotonic() + 30
while ours() and time.monotonic() < deadline:
    time.sleep(0.5)
for pid in ours():
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


class Watchdog:
    """Starts the watchdog process; ``close`` ends it once the driver cleaned up itself."""

    def __init__(self, prefix: str, kafka_run_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), prefix, str(kafka_run_dir)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the driver's process group spares it
        )

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
