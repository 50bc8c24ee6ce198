"""Reading a workflow spec document from a YAML or JSON file."""

from __future__ import annotations

from pathlib import Path

import yaml

from fleet.errors import SpecError


def load_spec_file(path: str | Path) -> object:
    """Read a spec document from a YAML or JSON file (YAML is a superset of JSON)."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([(where, f"cannot read file: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise SpecError([(where, f"not UTF-8 text: {exc.reason} at byte {exc.start}")]) from exc
    try:
        doc = yaml.load(text, Loader=_JsonLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}:{mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([(where, f"not valid YAML or JSON: {problem}")]) from exc
    if doc is None:
        raise SpecError([(where, "file is empty")])
    return doc


class _JsonLoader(yaml.SafeLoader):
    """SafeLoader that keeps unquoted dates as strings, so every scalar is JSON."""


_JsonLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
