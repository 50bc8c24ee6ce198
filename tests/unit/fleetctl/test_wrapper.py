"""``fleet`` after the quick start: bin/fleet (makes .venv when needed, then runs the
console script) and the console script itself answer --help and run a real command, from
any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
WRAPPER = ROOT / "bin" / "fleet"
CONSOLE_SCRIPT = Path(sys.executable).parent / "fleet"  # pyproject: fleet = fleetctl.cli:main


def _run(command: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", str(cwd))}
    env["FLEET_KAFKA_HOME"] = str(cwd / "no-broker-here")
    return subprocess.run(
        [str(command), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", [WRAPPER, CONSOLE_SCRIPT], ids=["bin/fleet", "console"])
def test_fleet_answers_help_and_a_real_command(command: Path, tmp_path: Path) -> None:
    if command == WRAPPER and not (ROOT / ".venv" / "bin" / "fleet").exists():
        pytest.skip("bin/fleet runs .venv/bin/fleet; this checkout has no .venv")
    assert command.exists(), f"{command} is missing"
    helped = _run(command, "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "Start here" in helped.stdout and "fleet demo" in helped.stdout
    status = _run(command, "kafka", "status", cwd=tmp_path)  # no broker in this run dir
    assert (status.returncode, status.stdout.strip()) == (1, "not running"), status.stderr


def test_the_wrapper_is_executable() -> None:
    assert os.access(WRAPPER, os.X_OK)
