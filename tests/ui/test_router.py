"""ui/router.py: the one list of pages, and pages/ holding exactly those scripts."""
from __future__ import annotations

from tests.conftest import REPO_ROOT
from ui.router import PAGES


def test_pages_holds_only_the_routed_scripts():
    scripts = sorted(path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "pages").glob("*.py"))
    assert scripts == sorted(script for script, _, _ in PAGES)
