"""The package's rooms and the direction of its imports.

Every module of ``indis`` (with ``export/`` and ``engines/`` read as ``indis.export`` and
``indis.engines``, the names they install under) is parsed with ``ast``; its imports of
other ``indis`` modules (relative ones resolved) form two graphs: the module-level one
(what runs on import) and the full one (function-local imports too). Importing ``a.b.c`` runs the package ``a.b``'s ``__init__`` first, so it counts as
an import of ``a.b`` too. Checked:

- neither graph has a cycle;
- inference (``indis.sampling``) and the deployment rooms (``indis.export``,
  ``indis.engines``) never import ``indis.training``;
- the core (processes, schedules, discretization, solvers) imports nothing from a room
  built on it.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# package name -> folder in the source tree (as setup.py's package_dir installs them)
ROOTS = {"indis": ROOT / "indis", "indis.export": ROOT / "export", "indis.engines": ROOT / "engines"}

CORE = ("indis.processes", "indis.schedules", "indis.discretization", "indis.solvers")
HIGHER = (
    "indis.sampling",
    "indis.training",
    "indis.export",
    "indis.engines",
    "indis.bench",
    "indis.evaluate",
    "indis.quickstart",
    "indis.cli",
    "indis.baselines",
)
NO_TRAINING = ("indis.sampling", "indis.export", "indis.engines")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is_package) for every module of the installed package."""
    out: dict[str, tuple[Path, bool]] = {}
    for pkg, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = list(rel.parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            if name.startswith("indis.") and name.split(".")[1] in ("export", "engines") and pkg == "indis":
                continue
            out[name] = (path, is_pkg)
    return out


MODULES = _modules()


def _within(name: str, room: str) -> bool:
    return name == room or name.startswith(room + ".")


def _resolve(target: str) -> str | None:
    """The module an imported dotted name lands in (longest known prefix)."""
    parts = target.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in MODULES:
            return cand
        parts.pop()
    return None


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(module-level, function-local) intra-package imports of one module."""
    path, is_pkg = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if is_pkg else name.rpartition(".")[0]
    top: set[str] = set()
    local: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    if child.level > 1:
                        base = base[: len(base) - (child.level - 1)]
                    assert base, f"{path}:{child.lineno}: relative import above the package top"
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                # `from pkg import sub` imports the submodule when one exists
                targets = [f"{mod}.{a.name}" for a in child.names] or [mod]
                targets = [t if _resolve(t) == t else mod for t in targets]
            for t in targets:
                if not (t == "indis" or t.startswith("indis.")):
                    continue
                hit = _resolve(t)
                if hit is None:
                    continue
                # importing a.b.c first runs the packages a.b (and a) unless the importer is inside them already
                parts = hit.split(".")
                for k in range(2, len(parts) + 1):
                    dep = ".".join(parts[:k])
                    if dep in MODULES and dep != name and not _within(name, dep):
                        (local if in_function else top).add(dep)
            visit(child, nested)

    visit(tree, False)
    return top, local


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = dfs(node)
            if found:
                return found
    return None


def test_modules_are_found():
    for name in ("indis.solvers", "indis.training.train", "indis.export.manifest", "indis.engines.loader",
                 "indis.sampling"):
        assert name in MODULES, f"{name} not found among {sorted(MODULES)[:5]}..."


def test_no_cycle_at_module_level():
    edges = {n: set(top) for n, (top, _) in GRAPH.items()}
    cycle = _cycle(edges)
    assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_no_cycle_with_function_local_imports():
    edges = {n: top | local for n, (top, local) in GRAPH.items()}
    cycle = _cycle(edges)
    assert cycle is None, "import cycle (function-local imports included): " + " -> ".join(cycle)


@pytest.mark.parametrize("room", NO_TRAINING)
def test_room_does_not_import_training(room):
    bad = sorted(
        f"{n} -> {t}"
        for n, (top, local) in GRAPH.items() if _within(n, room)
        for t in top | local if _within(t, "indis.training")
    )
    assert not bad, f"{room} must not import indis.training: {bad}"


def test_core_imports_no_higher_room():
    bad = sorted(
        f"{n} -> {t}"
        for n, (top, local) in GRAPH.items() if any(_within(n, c) for c in CORE)
        for t in top | local if any(_within(t, h) for h in HIGHER)
    )
    assert not bad, f"the core imports a room built on it: {bad}"


def test_graph_is_read():
    """The parser sees the imports it must: a known edge, a relative one, a local one."""
    top, _ = GRAPH["indis.solvers"]
    assert "indis.processes" in top
    top, _ = GRAPH["indis.export.manifest"]
    assert any(_within(t, "indis") for t in top)


def test_every_module_imports_under_its_installed_name():
    """The checkout imports the way it installs: every module of indis, indis.export and indis.engines, from the
    folder setup.py's package_dir maps it to (optional dependencies stay lazy, so none is needed here)."""
    for name, (path, _) in MODULES.items():
        mod = importlib.import_module(name)
        assert Path(mod.__file__).resolve() == path.resolve(), f"{name} imported from {mod.__file__}, not {path}"


@pytest.mark.parametrize("folder", ["export", "engines"])
def test_top_level_folder_is_refused_under_its_folder_name(folder):
    """`import export.manifest` from the checkout would break on the package's relative imports; it says instead
    which name to import."""
    r = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"import indis.{folder}, not {folder}" in r.stderr, r.stderr[-500:]
