"""Running the ``fleet`` command as a user does, in a child process, for the tests."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping

FLEET = [sys.executable, "-m", "fleetctl.cli"]

# What the installed ``fleet`` script runs: its console entry point, with the script's own
# directory leading the path rather than the working one (``-P``), so the working
# directory and PYTHONPATH count exactly as they do from a user's shell.
INSTALLED_FLEET = [
    sys.executable,
    "-P",
    "-c",
    "import sys\n"
    "from importlib.metadata import entry_points\n"
    "(script,) = entry_points(group='console_scripts', name='fleet')\n"
    "sys.argv[0] = 'fleet'\n"
    "sys.exit(script.load()())\n",
]


# A user's agent module at its smallest: one capability that echoes its payload.
ECHO_AGENTS = """\
from fleet import App

app = App()


@app.capability("echo")
def echo(payload):
    return payload
"""


def run_fleet(
    env: Mapping[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``fleet ARGS`` to its end, with its output captured; never raises on its status."""
    return subprocess.run(
        [*FLEET, *args], env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


def popen_fleet(env: Mapping[str, str], *args: str) -> subprocess.Popen[str]:
    """``fleet ARGS`` started, its output piped, for a test that watches it run."""
    return subprocess.Popen(
        [*FLEET, *args], env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def free_port() -> int:
    """A loopback port free right now (for a metrics server the test starts next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
