"""A ``fleet`` process always runs the product's own packages, whatever the user's path holds.

The design card fixes generic top-level names (``fleet``, ``orchestrator``, ``workers``),
and a user's project may well have a ``workers/`` of its own on ``PYTHONPATH`` or in the
directory ``fleet worker`` runs in. Python has one module namespace per process, so two
packages of one name cannot both load; the question is only which one wins. Here the
product wins, in its own processes: a finder placed first on ``sys.meta_path`` resolves
these four names to the directory this package was installed in, before any ``sys.path``
entry is looked at. Their submodules follow, through the packages' ``__path__``.

Why not the alternatives. Installing under one distinct namespace would mean a second
name for every module (the repository's ``workers.execute`` installed as, say,
``agentfleet.workers.execute``): tracebacks, docs and the design card would disagree
with the code that runs. Inserting the install directory first on ``sys.path`` would put
every other directory next to it (a checkout's ``tests/``) ahead of the user's too.

What it costs the user, said in the README ("One import path"): inside a ``fleet worker``
process their own package of one of these names cannot load, and ``fleet worker``
says so (:mod:`workers.loading`). Their agent code imports the product as ``fleet``
alone, so only a project package named ``fleet`` collides with user code in the
user's own programs.

Standard library only, and run from ``fleetctl/__init__.py``: it must be in place before
anything imports ``fleet``, and the console script imports ``fleetctl`` first.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

# The product's top-level packages: pyproject's wheel packages (a unit test holds them equal).
OWN = ("fleet", "orchestrator", "workers", "fleetctl")
# Where they are installed: site-packages for a wheel, the checkout for an editable install.
HOME = Path(__file__).resolve().parent.parent


class OwnPackages(importlib.abc.MetaPathFinder):
    """Finds the product's top-level packages in :data:`HOME` and nowhere else."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in OWN:
            return None  # everything else, submodules included, as Python finds it
        return importlib.machinery.PathFinder.find_spec(fullname, [str(HOME)])


def pin() -> None:
    """Put :class:`OwnPackages` first on ``sys.meta_path`` (once), after checking that no
    same-named package of someone else's was imported before it."""
    for name in OWN:
        module = sys.modules.get(name)
        if module is not None and not _is_ours(module):
            raise ImportError(
                f"a package named {name!r} was imported from {_where(module)} before the "
                f"fleet command's own ({HOME / name}); `fleet` needs its own {name!r}"
            )
    if not any(isinstance(finder, OwnPackages) for finder in sys.meta_path):
        sys.meta_path.insert(0, OwnPackages())


def _is_ours(module: ModuleType) -> bool:
    paths = [*getattr(module, "__path__", []), getattr(module, "__file__", None) or ""]
    return any(Path(p).resolve().is_relative_to(HOME) for p in paths if p)


def _where(module: ModuleType) -> str:
    return ", ".join(map(str, getattr(module, "__path__", []))) or str(module.__file__)
