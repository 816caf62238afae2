"""The dashboard's Streamlit settings: no magic, no Deploy button, no tracebacks in the browser."""
from __future__ import annotations

import ast
import tomllib

from tests.conftest import REPO_ROOT

CONFIG = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())


def test_streamlit_magic_is_off_and_no_page_relies_on_it():
    assert CONFIG["runner"]["magicEnabled"] is False  # a bare expression never renders as stray text
    bare = []
    scripts = [path for folder in ("pages", "ui") for path in sorted((REPO_ROOT / folder).glob("*.py"))]
    for path in [REPO_ROOT / "app.py", *scripts]:
        for node in ast.walk(ast.parse(path.read_text())):
            body = getattr(node, "body", None)
            for index, statement in enumerate(body if isinstance(body, list) else []):
                docstring = index == 0 and isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
                if isinstance(statement, ast.Expr) and not docstring \
                        and not isinstance(statement.value, (ast.Call, ast.Yield, ast.YieldFrom, ast.Await)):
                    bare.append(f"{path.name}:{statement.lineno}: {ast.unparse(statement)}")
    assert bare == []  # with magic on, each would be drawn on the page (once: "1 1 True local" under Queue)


def test_the_toolbar_offers_no_deploy_and_errors_show_no_details():
    assert CONFIG["client"]["toolbarMode"] == "viewer"  # no Deploy, Rerun or Clear cache
    assert CONFIG["client"]["showErrorDetails"] == "none"  # pages say what failed; the traceback stays in the log
