"""How ``fleet worker --app module:attribute`` finds the user's module, and says why not.

The working directory is importable, as with uvicorn and Celery, so ``fleet worker --app
myagents:app`` finds ``myagents.py`` where it runs: the installed ``fleet`` script puts
its own bin directory on the path, not the working directory, and only ``PYTHONPATH=.``
used to work. uvicorn and Celery insert the directory first; it is appended here, so
a file or package of the user's project never shadows the standard library, an installed
library or the product's own modules (a project's ``queue.py`` or ``workers/`` cannot
replace what the worker itself imports). It stays for the life of the process, so a
handler that imports a sibling module late still finds it. The price: a module of the
working directory named like an installed one is not the one imported, and the errors
below say so, with both paths.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from pathlib import Path
from types import ModuleType

from fleet.app import App
from fleet.errors import ConfigError


def import_app_module(module_name: str) -> ModuleType:
    """Import ``module_name`` with the working directory importable, or raise a
    :class:`ConfigError` that says where it was looked for."""
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        stem = Path(module_name).with_suffix("").name if module_name.endswith(".py") else ""
        example = f" (for {module_name}: --app {stem}:app)" if stem else ""
        raise ConfigError(
            f"app module {module_name!r}: name the module, not its file{example}; run "
            "`fleet worker` in the directory that holds it"
        )
    cwd = _working_directory_importable()
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name
        if missing is not None and (module_name + ".").startswith(missing + "."):
            raise ConfigError(_not_found(module_name, missing, cwd) + _taken(missing)) from exc
        taken = _taken(missing) if missing else ""
        raise ConfigError(f"importing app module {module_name!r} failed: {exc}{taken}") from exc
    except Exception as exc:  # any import-time failure of user code
        raise ConfigError(
            f"importing app module {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc


def app_attribute(module: ModuleType, module_name: str, attr_path: str) -> object:
    """``module``'s (dotted) attribute ``attr_path``, or a ConfigError naming the file
    that was imported (it may not be the one the user meant)."""
    target: object = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"app module {module_name!r} ({_origin(module)}) has no attribute "
                f"{attr_path!r}{_shadowed(module, module_name)}"
            )
        target = getattr(target, part)
    return target


def _working_directory_importable() -> Path:
    """Append the working directory to ``sys.path`` unless it is there already ('' is
    the working directory too, as ``python -m``/``-c`` put it); return it."""
    cwd = Path.cwd()
    for entry in sys.path:
        try:
            if Path(entry or os.curdir).resolve() == cwd.resolve():
                return cwd
        except OSError:
            continue
    sys.path.append(str(cwd))
    return cwd


def _not_found(module_name: str, missing: str, cwd: Path) -> str:
    parent, _, leaf = missing.rpartition(".")
    if parent and parent in sys.modules:
        package = sys.modules[parent]
        return (
            f"app module {module_name!r} not found: {parent!r} ({_origin(package)}) has no "
            f"submodule {leaf!r}"
        )
    return (
        f"app module {module_name!r} not found: there is no {missing}.py or {missing}/ in "
        f"the working directory ({cwd}) and no installed module {missing!r}; run `fleet "
        f"worker` in the directory that holds {missing}.py, or add that directory to "
        "PYTHONPATH"
    )


def _taken(missing: str) -> str:
    """A note when ``missing`` lives in a package of the user's whose name is taken in this
    process by one already imported (in a ``fleet`` process: the product's own ``fleet``,
    ``orchestrator``, ``workers`` and ``fleetctl``, pinned by ``fleetctl.own_packages``)."""
    top = missing.partition(".")[0]
    loaded = sys.modules.get(top)
    if loaded is None or "." not in missing:
        return ""
    loaded_at = {Path(p).resolve() for p in getattr(loaded, "__path__", [])}
    for entry in sys.path:
        spec = importlib.machinery.PathFinder.find_spec(top, [entry or os.curdir])
        locations = (spec.submodule_search_locations or []) if spec else []
        theirs = [Path(p).resolve() for p in locations]
        if theirs and not set(theirs) & loaded_at:
            return (
                f"; {theirs[0]} is a package of yours named {top!r}, but in this process "
                f"{top!r} is {_origin(loaded)}, which the worker itself runs on: rename yours "
                "(the product's own top-level names are fleet, orchestrator, workers and "
                "fleetctl)"
            )
    return ""


def _origin(module: ModuleType) -> str:
    """Where ``module`` was imported from: its file, or its package directories."""
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        return file
    paths = list(getattr(module, "__path__", []))
    return ", ".join(map(str, paths)) or "built in"


def _shadowed(module: ModuleType, module_name: str) -> str:
    """A note when the working directory holds a module of that name that lost to an
    installed one (the working directory comes last on the path)."""
    top = module_name.partition(".")[0]
    cwd = Path.cwd()
    mine = [p for p in (cwd / f"{top}.py", cwd / top) if p.exists()]
    origin = _origin(module)
    if not mine or origin.startswith(str(cwd.resolve()) + os.sep):
        return ""
    return (
        f"; {mine[0]} is not the module imported: an installed {top!r} comes first on the "
        "path, so rename yours"
    )


def load_app(reference: str) -> App:
    """Import ``package.module:attribute`` and check that it is an :class:`App`.

    The working directory is importable (appended to the path, above)."""
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        raise ConfigError(f"app reference {reference!r} must look like 'package.module:attribute'")
    module = import_app_module(module_name)
    target = app_attribute(module, module_name, attr_path)
    if not isinstance(target, App):
        raise ConfigError(
            f"{reference!r} is a {type(target).__name__}, not a fleet.App; "
            "point --app at the App instance your handlers are registered on"
        )
    if not len(target):
        raise ConfigError(f"app {reference!r} has no capabilities registered")
    return target
