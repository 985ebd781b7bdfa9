"""The README and the docs as a reader follows them: a page or two up front, every link
landing somewhere."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_relative_link_of_the_readme_and_the_docs_lands_on_a_file():
    broken = [(page.name, link) for page in PAGES
              for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
              if not link.startswith(("http://", "https://", "mailto:")) and not (page.parent / link).exists()]
    assert broken == []


def test_the_readme_is_a_front_door_that_names_every_reference_page():
    """Issue 35: what it is, how to start, where to read on, in under 200 lines; each page of
    docs/ linked from it."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    unlinked = [page.name for page in sorted((REPO / "docs").glob("*.md")) if f"](docs/{page.name})" not in readme]
    assert unlinked == []
