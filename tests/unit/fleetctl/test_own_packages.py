"""A user's own ``workers``/``orchestrator``/``fleet`` package on the path cannot break a
``fleet`` command (it broke every one, ``fleet kafka status`` included, with
``No module named 'workers.app'``); a worker runs the user's agents, and a user package
that loses the name is named in the error.

Each case runs the installed console entry point in a child process, the way a shell
would, with the user's project on PYTHONPATH and as the working directory. The user's
packages raise when imported, so any import of theirs in place of ours shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from fleetctl import own_packages
from tests.fleet_cli import ECHO_AGENTS, INSTALLED_FLEET

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
TRAP = "raise ImportError('the user project\\'s own {name} package was imported')\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project with its own ``fleet``, ``orchestrator`` and ``workers`` packages."""
    for name in ("fleet", "orchestrator", "workers"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(TRAP.format(name=name))
    (tmp_path / "myagents.py").write_text(ECHO_AGENTS)
    return tmp_path


def fleet(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "FLEET_LOG_FORMAT")}
    env |= {
        "PYTHONPATH": str(project),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",  # nothing listens: fail fast on the broker
        "FLEET_CONNECT_TIMEOUT": "1",
        "FLEET_KAFKA_HOME": str(project / ".kafka"),
    }
    return subprocess.run(
        [*INSTALLED_FLEET, *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_pinned_names_are_the_installed_packages() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert sorted(own_packages.OWN) == sorted(wheel)
    assert own_packages.HOME == ROOT  # this checkout is installed editable


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("--help",), "Usage: fleet"),
        (("kafka", "status"), "not running"),
        (("submit", "--help"), "Usage: fleet submit"),
    ],
)
def test_a_user_package_of_our_names_does_not_break_a_command(
    project: Path, args: tuple[str, ...], expect: str
) -> None:
    done = fleet(project, *args)
    assert "own" not in done.stderr or "package was imported" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert expect in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_worker_runs_the_users_agents_beside_their_workers_package(project: Path) -> None:
    """It gets past loading ``myagents`` (which imports ``fleet``: ours) and on to the
    broker, where nothing listens."""
    done = fleet(project, "worker", "--app", "myagents:app")
    assert "package was imported" not in done.stderr, done.stderr
    assert "app module" not in done.stderr, done.stderr
    assert "did not answer within 1 s" in done.stderr, done.stderr
    assert done.returncode != 0


def test_agents_inside_a_user_package_of_our_name_are_named_in_the_error(project: Path) -> None:
    (project / "workers" / "__init__.py").write_text("")
    (project / "workers" / "mine.py").write_text(ECHO_AGENTS)
    done = fleet(project, "worker", "--app", "workers.mine:app")
    assert done.returncode == 2, done.stderr
    assert f"{project / 'workers'} is a package of yours named 'workers'" in done.stderr
    assert "rename yours" in done.stderr


def test_an_import_of_a_user_package_of_our_name_from_agent_code_is_named_too(
    project: Path,
) -> None:
    (project / "workers" / "__init__.py").write_text("")
    (project / "workers" / "helpers.py").write_text("HELP = 1\n")
    (project / "myagents.py").write_text("from workers.helpers import HELP\n" + ECHO_AGENTS)
    done = fleet(project, "worker", "--app", "myagents:app")
    assert done.returncode == 2, done.stderr
    assert "No module named 'workers.helpers'" in done.stderr
    assert f"{project / 'workers'} is a package of yours named 'workers'" in done.stderr


def test_a_foreign_package_imported_before_the_pin_is_refused(project: Path) -> None:
    """If something imported a same-named package first (a sitecustomize, say), the pin
    cannot undo it: it says so instead of running on a mixture."""
    (project / "workers" / "__init__.py").write_text("")
    probe = textwrap.dedent("""\
        import workers
        import fleetctl
    """)
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert f"a package named 'workers' was imported from {project / 'workers'}" in done.stderr
    assert "`fleet` needs its own 'workers'" in done.stderr
