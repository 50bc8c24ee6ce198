"""A worker's agent id: stable across restarts, unique among the processes of one host.

``fleet worker --agent-id ID`` names it outright (a StatefulSet pod's name, say). Without
it the id is ``<host>-<name>-<slot>``: the name is configured (FLEET_AGENT_NAME) or the
app's module, and the slot is the lowest number no running process on this host holds for
that name. A process holds its slot with an exclusive lock on a file under
FLEET_AGENT_STATE_DIR for as long as it lives; the kernel drops the lock when the process
ends, however it ends (kill -9 too). So a restarted worker takes back its old slot, and its
old id: the same agent, not a new one next to a dead one. Two pools of the same app on one
host get slots 0 and 1 instead of one id between them.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fleet.errors import ConfigError

AGENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
MAX_SLOTS = 1024


def check_agent_id(agent_id: str) -> str:
    if not AGENT_ID_RE.match(agent_id):
        raise ConfigError(
            f"agent id {agent_id!r} is not valid: letters, digits, '.', '_', '-', starting "
            "with a letter or digit, at most 200 characters"
        )
    return agent_id


def _clean(text: str) -> str:
    """``text`` as a part of an agent id: other characters become '-'."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return cleaned or "agent"


def default_name(app_spec: str) -> str:
    """The name of an app's agents when none is configured: its module (``myagents:app``
    -> ``myagents``; ``pkg.agents:app`` -> ``pkg.agents``)."""
    return _clean(app_spec.split(":", 1)[0])


@dataclass
class AgentIdentity:
    """The agent id of this process and, when derived, the lock that holds it."""

    agent_id: str
    _lock: IO[bytes] | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing drops the lock
            self._lock = None


def claim(
    agent_id: str | None, name: str, state_dir: Path, host: str | None = None
) -> AgentIdentity:
    """This process's agent id: ``agent_id`` if given, else ``<host>-<name>-<slot>``."""
    if agent_id:
        return AgentIdentity(check_agent_id(agent_id))
    prefix = f"{_clean(host or socket.gethostname())}-{_clean(name)}"
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot keep agent ids in {state_dir} (FLEET_AGENT_STATE_DIR): {exc}"
        ) from exc
    for slot in range(MAX_SLOTS):
        candidate = f"{prefix}-{slot}"
        handle = (state_dir / f"{candidate}.lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue  # a running process holds it
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        return AgentIdentity(check_agent_id(candidate[:200]), handle)
    raise ConfigError(f"all {MAX_SLOTS} agent ids {prefix}-N are held by running processes")
