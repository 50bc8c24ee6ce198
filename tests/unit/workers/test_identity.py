"""Agent ids: named outright, or claimed per host and name so a restart gets its old id
back and two processes never share one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.errors import ConfigError
from workers.identity import claim, default_name

pytestmark = pytest.mark.unit


def test_a_given_id_is_used_as_it_is(tmp_path: Path) -> None:
    assert claim("pod-7", "x", tmp_path).agent_id == "pod-7"  # holds no file
    assert not list(tmp_path.iterdir())  # nothing to hold
    with pytest.raises(ConfigError, match="not valid"):
        claim("has/slash", "x", tmp_path)


def test_default_name_is_the_apps_module() -> None:
    assert default_name("myagents:app") == "myagents"
    assert default_name("pkg.agents:app") == "pkg.agents"
    assert default_name("weird name!:app") == "weird-name"


def test_slots_are_unique_while_held_and_taken_back_when_released(tmp_path: Path) -> None:
    first = claim(None, "myagents", tmp_path, host="box")
    second = claim(None, "myagents", tmp_path, host="box")
    assert (first.agent_id, second.agent_id) == ("box-myagents-0", "box-myagents-1")
    other = claim(None, "billing", tmp_path, host="box")
    assert other.agent_id == "box-billing-0"  # slots count per name
    first.release()  # the process ended
    again = claim(None, "myagents", tmp_path, host="box")
    assert again.agent_id == "box-myagents-0"  # a restart is the same agent
    for identity in (second, other, again):
        identity.release()


def test_a_killed_process_gives_its_slot_back(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from workers.identity import claim; "
            f"held = claim(None, 'n', Path({str(tmp_path)!r}), host='h'); "
            "print(held.agent_id, flush=True); "
            "time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "h-n-0"
        beside = claim(None, "n", tmp_path, host="h")
        assert beside.agent_id == "h-n-1"  # slot 0 is held by the child
        beside.release()
    finally:
        holder.kill()  # kill -9: no clean-up runs
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    restarted = claim(None, "n", tmp_path, host="h")
    assert restarted.agent_id == "h-n-0"
    restarted.release()
