"""The house stays as built: the import graph obeys the layers of ARCHITECTURE.md.

Read with the standard library's ``ast`` (no module is imported), so a violation is
reported with the file and line of the offending import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fleet", "orchestrator", "workers", "fleetctl")
# The rooms that may talk to a broker; everything else in a package is pure.
SHELLS = ("fleet.kafka", "orchestrator.shell", "workers.shell", "fleetctl")
# What each layer may import of ours (the kernel nothing but itself).
MAY_IMPORT = {
    "fleet": {"fleet"},
    "orchestrator": {"fleet", "orchestrator"},
    "workers": {"fleet", "workers"},
    "fleetctl": {"fleet", "orchestrator", "workers", "fleetctl"},
}
BROKER_LIBRARIES = ("confluent_kafka",)
MAX_LINES = 400
# Modules allowed past MAX_LINES, each argued beside its entry here.
LONG_MODULES: dict[str, str] = {}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted
    where: str  # path:line
    # Under ``if TYPE_CHECKING:``: a name for the type checker, never loaded at run time.
    typing_only: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.module} imports {self.target}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _imports(path: Path, source: str | None = None) -> list[Import]:
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    text = path.read_text() if source is None else source
    tree = ast.parse(text, str(path))
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for statement in node.body
        for inner in ast.walk(statement)
    }
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from orchestrator import changelog` imports orchestrator.changelog.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        found.extend(Import(module, target, where, id(node) in typing_only) for target in targets)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _ours(target: str) -> str | None:
    top = target.split(".", maxsplit=1)[0]
    return top if top in PACKAGES else None


def _in_shell(module: str) -> bool:
    return any(_within(module, shell) for shell in SHELLS)


def _cross_layer(imports: list[Import]) -> list[str]:
    return [
        str(imp)
        for imp in imports
        if (layer := _ours(imp.target)) is not None
        and layer not in MAY_IMPORT[imp.module.split(".")[0]]
    ]


def _broker_reach(imports: list[Import]) -> list[str]:
    return [
        str(imp)
        for imp in imports
        if not _in_shell(imp.module)
        and not imp.typing_only
        and (
            any(_within(imp.target, lib) for lib in BROKER_LIBRARIES)
            or any(_within(imp.target, shell) for shell in SHELLS)
        )
    ]


ALL_IMPORTS = [imp for path in _sources() for imp in _imports(path)]


def test_the_graph_is_read() -> None:
    # A walker that found nothing would pass every rule below.
    assert len(ALL_IMPORTS) > 300
    assert any(i.module == "orchestrator.shell.runtime" for i in ALL_IMPORTS)


def test_layers_import_only_what_is_below_them() -> None:
    broken = _cross_layer(ALL_IMPORTS)
    assert broken == [], "imports across the layers:\n" + "\n".join(broken)


def test_only_the_shells_touch_a_broker() -> None:
    broken = _broker_reach(ALL_IMPORTS)
    assert broken == [], "a pure module reaches a broker:\n" + "\n".join(broken)


def test_no_process_imports_the_local_broker_launcher() -> None:
    broken = [
        str(imp)
        for imp in ALL_IMPORTS
        if _within(imp.target, "fleetctl.localkafka") and not _within(imp.module, "fleetctl")
    ]
    assert broken == []


def test_modules_stay_small() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _sources()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    unexplained = {name: n for name, n in long.items() if name not in LONG_MODULES}
    assert unexplained == {}, f"modules over {MAX_LINES} lines: {unexplained}"
    assert set(LONG_MODULES) <= set(long), "an exception no longer needed: drop it"


@pytest.mark.parametrize(
    ("planted_in", "source", "rule"),
    [
        ("fleet/codec.py", "from orchestrator.spec import parse_spec\n", _cross_layer),
        ("orchestrator/engine.py", "from workers import loading\n", _cross_layer),
        ("workers/loading.py", "from orchestrator import engine\n", _cross_layer),
        ("orchestrator/engine.py", "from fleetctl.cli import main\n", _cross_layer),
        ("workers/loading.py", "import confluent_kafka\n", _broker_reach),
        ("orchestrator/engine.py", "from fleet.kafka import KafkaClients\n", _broker_reach),
        ("orchestrator/engine.py", "from .shell import runtime\n", _broker_reach),
        ("fleet/codec.py", "from confluent_kafka import Producer\n", _broker_reach),
    ],
)
def test_each_rule_catches_a_planted_violation(planted_in: str, source: str, rule: object) -> None:
    planted = _imports(ROOT / planted_in, source)
    assert callable(rule)
    assert rule(planted) != []


def test_allowed_imports_pass() -> None:
    allowed = _imports(ROOT / "fleetctl/cli.py", "from orchestrator.shell import runtime\n")
    # fleet/__init__.py names FleetClient for the type checker and loads it on first use.
    allowed += _imports(
        ROOT / "fleet/__init__.py",
        "if TYPE_CHECKING:\n    from fleet.kafka.client import FleetClient\n",
    )
    allowed += _imports(ROOT / "orchestrator/shell/loop.py", "import confluent_kafka\n")
    assert _cross_layer(allowed) == [] and _broker_reach(allowed) == []
