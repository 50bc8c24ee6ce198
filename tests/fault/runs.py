"""What the fault-run tests share: the seed they run with and whether a soak was asked."""

from __future__ import annotations

import os
import re

import pytest


def seed(default: int) -> int:
    """FLEET_FAULT_SEED if set (to replay a run), else ``default``."""
    return int(os.environ.get("FLEET_FAULT_SEED", default))


def soak_asked(config: pytest.Config) -> bool:
    """The long runs go only with ``-m slow`` (not ``not slow``) or FLEET_FAULT_SOAK=1."""
    expression = str(config.getoption("markexpr") or "")
    return os.environ.get("FLEET_FAULT_SOAK") == "1" or bool(
        re.search(r"(?<!not )\bslow\b", expression)
    )
