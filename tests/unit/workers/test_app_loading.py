"""``fleet worker --app module:app``: the working directory is importable, and every
error about a module that is not found says where it was looked for, truly."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from tests.fleet_cli import ECHO_AGENTS, INSTALLED_FLEET
from workers.loading import load_app

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user's project directory as the working directory, not yet on the path.

    '' (what ``python -m``/``-c`` put first) is the working directory too, so it goes: the
    installed ``fleet`` script has only its own bin directory there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p and Path(p) != tmp_path])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fleet_user_"):
            del sys.modules[name]


def test_the_working_directory_is_importable_at_the_end_of_the_path(project: Path) -> None:
    (project / "fleet_user_agents.py").write_text(ECHO_AGENTS)
    path_before = list(sys.path)
    assert load_app("fleet_user_agents:app").capabilities == ["echo"]
    # Appended, not put first: the product, the stdlib and installed libraries win.
    assert sys.path == [*path_before, str(project)]
    (project / "fleet_user_more.py").write_text(ECHO_AGENTS)
    load_app("fleet_user_more:app")
    assert sys.path.count(str(project)) == 1  # once, however many loads


def test_a_missing_module_says_where_it_was_looked_for_and_the_hint_works(
    project: Path,
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_app("fleet_user_later:app")
    message = str(raised.value)
    assert message.startswith("app module 'fleet_user_later' not found: ")
    assert f"no fleet_user_later.py or fleet_user_later/ in the working directory ({project})" in (
        message
    )
    assert "run `fleet worker` in the directory that holds fleet_user_later.py" in message
    # Following the hint is enough: the file there, the same command finds it.
    (project / "fleet_user_later.py").write_text(ECHO_AGENTS)
    assert load_app("fleet_user_later:app").capabilities == ["echo"]


def test_a_package_without_the_submodule_is_named_with_its_directory(project: Path) -> None:
    (project / "fleet_user_pkg").mkdir()
    (project / "fleet_user_pkg" / "__init__.py").write_text("")
    with pytest.raises(ConfigError) as raised:
        load_app("fleet_user_pkg.agents:app")
    assert str(raised.value) == (
        "app module 'fleet_user_pkg.agents' not found: 'fleet_user_pkg' "
        f"({project / 'fleet_user_pkg' / '__init__.py'}) has no submodule 'agents'"
    )
    (project / "fleet_user_pkg" / "agents.py").write_text(ECHO_AGENTS)
    assert load_app("fleet_user_pkg.agents:app").capabilities == ["echo"]


def test_a_missing_attribute_names_the_file_that_was_imported(project: Path) -> None:
    (project / "fleet_user_noapp.py").write_text("application = None\n")
    with pytest.raises(ConfigError) as raised:
        load_app("fleet_user_noapp:app")
    assert str(raised.value) == (
        f"app module 'fleet_user_noapp' ({project / 'fleet_user_noapp.py'}) has no attribute 'app'"
    )


def test_a_module_named_like_an_installed_one_is_said_to_lose(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The working directory comes last, so the standard library's colorsys is imported,
    # not the project's; the error says so rather than "no attribute" alone.
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    (project / "colorsys.py").write_text(ECHO_AGENTS)
    with pytest.raises(ConfigError) as raised:
        load_app("colorsys:app")
    message = str(raised.value)
    assert "has no attribute 'app'" in message
    assert f"; {project / 'colorsys.py'} is not the module imported: an installed " in message
    assert "rename yours" in message


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("myagents.py:app", "name the module, not its file (for myagents.py: --app myagents:app)"),
        ("src/myagents:app", "name the module, not its file; run `fleet worker` in the"),
    ],
)
def test_a_file_name_is_not_a_module_name(project: Path, reference: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_app(reference)


def test_fleet_worker_finds_the_app_in_its_working_directory(tmp_path: Path) -> None:
    """The trap as a user meets it: the installed ``fleet`` script (``-P``: its directory,
    not the working one, leads the path) started where myagents.py is. Nothing listens on
    the broker address, so it gets past the import and fails on the broker instead."""
    (tmp_path / "myagents.py").write_text(ECHO_AGENTS)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env |= {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", "FLEET_CONNECT_TIMEOUT": "1"}
    done = subprocess.run(
        [*INSTALLED_FLEET, "worker", "--app", "myagents:app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "app module" not in done.stderr, done.stderr
    assert "did not answer within 1 s" in done.stderr, done.stderr
    assert done.returncode != 0
