"""The documents point where they say: every relative link of the README, ARCHITECTURE.md
and docs/ names a file of the repository and, with a ``#fragment``, one of its headings.
Material moved out of the README to docs/ must not leave dead links behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no headings in code
    return {anchor(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def links() -> list[tuple[Path, str]]:
    return [
        (document, target)
        for document in DOCUMENTS
        for target in LINK.findall(document.read_text())
        if not re.match(r"[a-z]+:", target)  # http:, https:, mailto:
    ]


def test_the_documents_have_links_to_check() -> None:
    assert len(DOCUMENTS) >= 8
    assert len(links()) >= 15


@pytest.mark.parametrize(
    ("document", "target"), links(), ids=lambda v: v.name if isinstance(v, Path) else v
)
def test_a_relative_link_resolves(document: Path, target: str) -> None:
    file, _, fragment = target.partition("#")
    path = (document.parent / file).resolve() if file else document
    assert path.exists(), f"{document.relative_to(ROOT)}: {target}: no such file"
    if fragment:
        assert fragment in anchors(path), f"{document.relative_to(ROOT)}: {target}: no heading"


def test_the_anchor_rule_matches_githubs() -> None:
    assert anchor("One import path, and the product's package names") == (
        "one-import-path-and-the-products-package-names"
    )
    assert anchor("Submitting from other languages: Avro or JSON") == (
        "submitting-from-other-languages-avro-or-json"
    )
