"""Every relative link of the docs leads somewhere: the file exists, and an
anchor names a heading of that file (GitHub's slugs). The README points into
docs/ for everything but the quickstart, so a moved section must not leave a
dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", REPO_ROOT / "plan.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO_ROOT)) for d in DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    dead = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        name, _, anchor = target.partition("#")
        path = (doc.parent / name).resolve() if name else doc
        if not path.exists():
            dead.append(f"{target}: no {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dead.append(f"{target}: no heading #{anchor} in {path.name}")
    assert not dead, "\n".join(dead)


def test_readme_stays_short() -> None:
    """The README is the quickstart and pointers (issue 25: at most 200 lines)."""
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 200


def test_plan_stays_design_decisions_and_risks() -> None:
    """plan.md: at most 300 lines and no dated run log (issue 25); figures live in
    docs/benchmarks.md and its test section."""
    lines = (REPO_ROOT / "plan.md").read_text().splitlines()
    assert len(lines) <= 300
    assert not [line for line in lines if re.search(r"\b20\d\d-\d\d-\d\d\b", line)]
