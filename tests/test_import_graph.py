"""No import cycle among Arena's own modules, counting imports inside functions too.

A function-level import runs later than a top-level one, but it is an edge all the same: moving an
import into a function to dodge a cycle hides the tangle, it does not remove it. The graph is read
from the source with `ast`, so a module imported only on some path (a button, Ray's worker) counts.
Imports of other libraries (torch, tensorflow, ray, streamlit) are not edges: only Arena's modules
are nodes. Packages are found on disk (every top-level directory holding Python files but tests/,
with or without an __init__.py), so one added later (ui/, analysis/) is checked without touching
this file.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Optional

from db.session import make_sessionmaker
from tests.conftest import REPO_ROOT

NOT_ARENA = {"tests"}  # test code imports whatever it tests; it is not part of the house


def arena_packages(root: Path = REPO_ROOT) -> list[str]:
    """Top-level directories of the repository that hold Python files (.venv and the like, and tests/, aside)."""
    return sorted(path.name for path in root.iterdir()
                  if path.is_dir() and not path.name.startswith(".") and path.name not in NOT_ARENA
                  and any(path.glob("*.py")))


def module_files(root: Path, packages: list[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the packages (a package is its __init__.py)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _known_prefix(name: str, modules: dict[str, Path]) -> Optional[str]:
    """The longest leading part of a dotted name that is one of Arena's modules (None for other libraries)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _imported(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> set[str]:
    """Arena modules one import statement names: `from engine import parity` is engine.parity, not engine."""
    if isinstance(node, ast.Import):
        return {found for alias in node.names if (found := _known_prefix(alias.name, modules))}
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:  # relative: resolved against the importing module's package
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[:len(package) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    found = set()
    for alias in node.names:
        target = f"{base}.{alias.name}" if base else alias.name
        hit = target if target in modules else _known_prefix(base, modules)
        if hit:
            found.add(hit)
    return found


def import_edges(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first import}, for imports at any depth (functions, if-blocks).

    No implicit edge to a parent package: Python runs engine/executors/__init__.py before a submodule
    of it, but a package that imports its own submodules (a registry) is the ordinary shape, not a cycle.
    """
    edges: dict[str, dict[str, int]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, module, path.name == "__init__.py", modules):
                    if target != module:
                        targets[target] = min(targets.get(target, node.lineno), node.lineno)
        edges[module] = targets
    return edges


def find_cycle(graph: dict[str, set[str]] | dict[str, dict[str, int]]) -> Optional[list[str]]:
    """One cycle of the directed graph as [a, b, ..., a], or None; deterministic (nodes visited in sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished (no cycle through it)
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def describe(cycle: list[str], edges: dict[str, dict[str, int]], modules: dict[str, Path], root: Path) -> str:
    """The cycle with the line of each import: where to look."""
    steps = [f"{a} imports {b} ({modules[a].relative_to(root)}:{edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return "import cycle " + " -> ".join(cycle) + ":\n  " + "\n  ".join(steps)


# The finder itself, on graphs small enough to check by eye ---------------------------------------------

def test_the_cycle_finder_finds_a_cycle_and_says_which():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c", "d"}, "d": {"b"}}) == ["b", "d", "b"]


def test_the_cycle_finder_passes_a_graph_without_one():
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None  # a diamond is no cycle
    assert find_cycle({}) is None


def test_a_function_level_import_that_dodges_a_cycle_still_counts(tmp_path):
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "orders.py").write_text("from shop.stock import reserve\n\ndef order():\n    return reserve()\n")
    (package / "stock.py").write_text("import os\n\ndef reserve():\n    from shop import orders  # dodged\n"
                                      "    import torch  # not Arena's: no edge\n    return orders\n")
    (package / "tools.py").write_text("from . import stock\nfrom .stock import reserve\n")
    modules = module_files(tmp_path, arena_packages(tmp_path))
    edges = import_edges(modules)
    assert edges["shop.stock"] == {"shop.orders": 4} and edges["shop.tools"] == {"shop.stock": 1}
    cycle = find_cycle(edges)
    assert cycle == ["shop.orders", "shop.stock", "shop.orders"]
    assert "shop/stock.py:4" in describe(cycle, edges, modules, tmp_path)


# Arena's modules --------------------------------------------------------------------------------------

def test_the_packages_are_found_not_listed():
    packages = arena_packages()
    assert {"engine", "db", "pages", "bench"} <= set(packages) and "tests" not in packages
    modules = module_files(REPO_ROOT, packages)
    assert {"engine.launch", "engine.scheduler", "engine.processes", "engine.executors.base",
            "db.queries", "engine.backends.base"} <= set(modules)


def test_arena_s_modules_import_each_other_without_a_cycle():
    modules = module_files(REPO_ROOT, arena_packages())
    edges = import_edges(modules)
    cycle = find_cycle(edges)
    assert cycle is None, describe(cycle, edges, modules, REPO_ROOT)


def test_the_cli_starts_without_pandas_or_alembic(arena_db):
    """`python -m engine` answers a bad flag, and opens a database already at head, in about half a second:
    pandas (0.4 s) is imported where a frame is built, Alembic (0.16 s) where a schema is migrated."""
    make_sessionmaker(arena_db).kw["bind"].dispose()  # created and migrated to head here
    probe = ("import sys\n"
             "import engine.cli\n"
             "from db.session import make_sessionmaker\n"
             f"make_sessionmaker({arena_db!r}).kw['bind'].dispose()\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'pandas', 'alembic'}))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
