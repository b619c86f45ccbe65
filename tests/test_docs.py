"""The README and docs/ stay navigable: every relative link resolves, the README lists every
docs page, and the two set-up commands it gives are Makefile targets (.ci/run runs one)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    """Link targets that are files of the repository (no scheme, no bare #anchor)."""
    targets = [m.group(1) for m in LINK.finditer(page.read_text())]
    return [t.split("#")[0] for t in targets if "://" not in t and not t.startswith(("#", "mailto:"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    broken = [t for t in relative_links(page) if not (page.parent / t).exists()]
    assert broken == [], f"{page.relative_to(REPO)} links to missing files: {broken}"


def test_readme_lists_every_docs_page():
    linked = {(REPO / t).resolve() for t in relative_links(REPO / "README.md")}
    pages = {p.resolve() for p in (REPO / "docs").iterdir() if p.suffix in (".md", ".json")}
    assert sorted(str(p.relative_to(REPO)) for p in pages - linked) == []


def test_readme_set_up_commands_are_makefile_targets():
    readme = (REPO / "README.md").read_text()
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))
    for command in ("make run", "make test"):
        assert command in readme
        assert command.split()[1] in targets
    assert "make test" in (REPO / ".ci" / "run").read_text()
