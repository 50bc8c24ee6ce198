"""The README's "Your first agent", run as written, in a project that has its own
``workers/`` and ``orchestrator/`` packages on PYTHONPATH (which broke every ``fleet``
command: the product installs those generic names). The agent module and the spec are
taken from the README itself, so the walkthrough cannot drift from what works.

Every ``fleet`` here is the installed console entry point, run in the project directory.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet_cli import INSTALLED_FLEET

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
TRAP = "raise ImportError('the project\\'s own {name} package was imported')\n"
WAIT_S = 120


def readme_block(language: str, first_line: str) -> str:
    """The README's fenced ``language`` block whose first line is ``first_line``."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith(first_line + "\n")]
    return str(block)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "myagents.py").write_text(readme_block("python", "# myagents.py"))
    (tmp_path / "hello.yaml").write_text(
        readme_block("yaml", "# hello.yaml: two steps, the second reads the first's output")
    )
    for name in ("workers", "orchestrator"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(TRAP.format(name=name))
    return tmp_path


@pytest.fixture
def env(kafka_bootstrap: str, project: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLEET_")}
    return environment | {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FLEET_TOPIC_PREFIX": f"first-{uuid.uuid4().hex[:8]}.",
        "PYTHONPATH": str(project),
    }


class Started:
    """``fleet ... &`` in the project directory, its output in ``<name>.log`` there."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.project, self.env = project, env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, ready: str) -> None:
        log_path = self.project / f"{name}.log"
        with log_path.open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [*INSTALLED_FLEET, *args],
                cwd=self.project,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + WAIT_S
        while ready not in log_path.read_text():
            assert self.processes[name].poll() is None, self.logs()
            assert time.monotonic() < deadline, self.logs()
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n" + (self.project / f"{name}.log").read_text() for name in self.processes
        )

    def alive(self) -> bool:
        return all(process.poll() is None for process in self.processes.values())

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture
def started(project: Path, env: dict[str, str]) -> Iterator[Started]:
    fleet = Started(project, env)
    try:
        yield fleet
    finally:
        fleet.stop()


def fleet(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``fleet ARGS`` typed in the project directory, to its end."""
    return run_in(project, env, [*INSTALLED_FLEET, *args])


def run_in(project: Path, env: dict[str, str], argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S + 30,
        check=False,
    )


def test_the_readme_walkthrough_beside_the_projects_own_workers_package(
    project: Path, env: dict[str, str], started: Started
) -> None:
    """``fleet worker --app myagents:app &``, ``fleet orchestrator &``, then ``fleet submit
    hello.yaml --wait``, pasted at once: submit was refused (the worker had not created
    its topics yet), and once past that its wait began before the orchestrator had
    created the events topic, read nothing, and timed out on a completed workflow."""
    started.start("worker", "worker", "--app", "myagents:app", ready="")
    submit = subprocess.Popen(
        [*INSTALLED_FLEET, "submit", "hello.yaml", "--wait", "--timeout", str(WAIT_S)],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started.start("orchestrator", "orchestrator", ready="orchestrator consuming")
        out, err = submit.communicate(timeout=WAIT_S + 30)
    finally:
        submit.kill()
    assert submit.returncode == 0, out + err + started.logs()
    assert "package was imported" not in err + started.logs()
    assert started.alive(), started.logs()
    # What the README says it prints: the COMPLETED event with {"text": "HELLO, WORLD"}.
    completed = json.loads(out.strip().splitlines()[-1])
    assert completed["kind"] == "COMPLETED", out
    assert completed["output"] == {"text": "HELLO, WORLD"}

    tail = fleet(project, env, "tail", "--workflow", completed["workflow_id"], "--json")
    assert tail.returncode == 0, tail.stderr
    kinds = [json.loads(line)["kind"] for line in tail.stdout.splitlines() if line.strip()]
    assert kinds[0] == "ACCEPTED" and kinds[-1] == "COMPLETED", tail.stdout
    assert kinds.count("STEP_STARTED") == kinds.count("STEP_COMPLETED") == 2, tail.stdout

    status = fleet(project, env, "status", completed["workflow_id"])
    assert status.returncode == 0, status.stderr
    first, steps, last = status.stdout.splitlines()
    assert first.startswith(f"{completed['workflow_id']}  COMPLETED  hello  submitted "), first
    assert steps == "steps completed (2): greet, shout"
    assert last == 'last event: COMPLETED output {"text":"HELLO, WORLD"}'

    # The README's Python client, run as written: a program of the user's, in the project
    # whose own workers/ stays importable for it (only `fleet` is the product's there).
    program = readme_block("python", "import os")
    assert "from fleet import FleetClient, Settings" in program
    own_workers = "\nimport workers  # the project's own: it raises\n"
    client = run_in(project, env, [sys.executable, "-c", program + own_workers])
    assert "COMPLETED {'greeting': 'hello, you'}" in client.stdout, client.stdout + client.stderr
    assert "ACCEPTED None" in client.stdout and "STEP_COMPLETED a" in client.stdout
    assert "the project's own workers package was imported" in client.stderr, client.stderr
