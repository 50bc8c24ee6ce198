"""The benchmark's modules live in scripts/, outside the packages, and import each other
by their bare names (as ``scripts/bench`` runs them): that folder goes on the path."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[3] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.append(str(SCRIPTS))
