"""The CLI's error paths: one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fleet_cli import free_port, run_fleet

pytestmark = pytest.mark.unit

VALID = "name: ok\nsteps:\n  - id: a\n    capability: noop\n"


def _fleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_fleet({"PATH": "/usr/bin:/bin", **env}, *args, timeout=60)


def _closed_port() -> int:
    return free_port()  # closed once it returns: nothing listens there


def test_unreachable_broker_is_one_line_and_exit_2(tmp_path: Path) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text(VALID)
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}", "FLEET_CONNECT_TIMEOUT": "2"}
    done = _fleet("submit", str(spec), env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("fleet:")]
    assert len(errors) == 1
    assert "did not answer within 2 s" in errors[0]
    assert "Traceback" not in done.stderr


def test_no_broker_at_all_says_how_to_get_one(tmp_path: Path) -> None:
    done = _fleet("tail", env={"FLEET_KAFKA_HOME": str(tmp_path / "nothing-here")})
    assert done.returncode == 2
    assert "set KAFKA_BOOTSTRAP_SERVERS, or start the local one with `fleet kafka start`" in (
        done.stderr
    )


def test_unreadable_spec_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = _fleet("submit", str(tmp_path / "missing.yaml"), env={})
    assert done.returncode == 2
    assert done.stderr.startswith("fleet: invalid workflow:")
    assert len(done.stderr.strip().splitlines()) == 1


def test_invalid_spec_is_refused_before_any_broker_is_needed(tmp_path: Path) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text("name: x\nsteps:\n  - id: a\n    capability: noop\n    needs: [b]\n")
    done = _fleet("submit", str(spec), env={"FLEET_KAFKA_HOME": str(tmp_path / "none")})
    assert done.returncode == 2
    assert "fleet: invalid workflow:" in done.stderr and "'b'" in done.stderr


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ('"a string"', "got a string"),
        ("[1, 2]", "got an array"),
        ("42", "got a number"),
        ("null", "got null"),
        ("{bad", "not valid JSON"),
    ],
)
def test_an_input_that_is_not_a_json_object_is_refused_at_submit(
    tmp_path: Path, given: str, said: str
) -> None:
    spec = tmp_path / "wf.yaml"
    spec.write_text(VALID)
    # No broker anywhere: the refusal comes before one is looked for.
    done = _fleet("submit", str(spec), "--input", given, env={"FLEET_KAFKA_HOME": str(tmp_path)})
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Invalid value for '--input'" in done.stderr and said in done.stderr
    assert "Traceback" not in done.stderr
