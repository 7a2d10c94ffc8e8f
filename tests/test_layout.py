"""The package's shape: imports run from higher layers to lower ones and never in a loop (function-level imports
included), the README's layout section names what the tree holds, and tests/ mirrors the source folders."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "router_ml"

# (a module prefix, prefixes it must never import): the call log, routers and data sit below the gateway; in the
# gateway, api/ (HTTP) is on top, then gateway/, then tenancy/, observability/ and providers/.
LAYERS = [
    (("router_ml.calllog", "router_ml.routers", "router_ml.data", "router_ml.bundle", "router_ml.train",
      "router_ml.forecast", "router_ml.clock", "router_ml.pricing", "router_ml.online"),
     ("router_ml.serve", "router_ml.cli")),
    (("router_ml.serve.gateway", "router_ml.serve.tenancy", "router_ml.serve.observability",
      "router_ml.serve.providers"), ("router_ml.serve.api", "router_ml.serve.app", "router_ml.serve.main")),
    (("router_ml.serve.tenancy", "router_ml.serve.observability", "router_ml.serve.providers"),
     ("router_ml.serve.gateway",)),
    (("router_ml.serve.providers",), ("router_ml.serve.tenancy", "router_ml.serve.observability")),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere in it (``from a import b`` counts a.b when b is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        out.update(name for name in names if name in known)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imports(path, known) - {module} for module, path in known.items()}


def test_no_module_imports_a_higher_layer(graph):
    wrong = [f"{module} imports {target}" for module, targets in graph.items() for target in sorted(targets)
             for lower, higher in LAYERS if module.startswith(lower) and target.startswith(higher)]
    assert wrong == []


def test_no_import_loop(graph):
    """Tarjan's strongly connected components of the import graph: each must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while (member := stack.pop()) != module:
                component.append(member)
            if component:
                loops.append(sorted([module, *component]))

    for module in graph:
        if module not in index:
            visit(module)
    assert loops == []


def _layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Layout[ \t]*\n+```\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Layout' section with a code block"
    return match.group(1)


def test_the_readme_layout_names_every_folder_and_serve_module_and_only_files_that_exist():
    layout = _layout()
    folders = {p.name for p in PACKAGE.rglob("*") if p.is_dir() and any(p.glob("*.py"))}
    assert sorted(f for f in folders if not re.search(rf"\b{f}/", layout)) == []
    modules = [p for p in PACKAGE.glob("*.py")] + list((PACKAGE / "serve").rglob("*.py")) + \
        list((PACKAGE / "calllog").glob("*.py"))
    unnamed = sorted(str(p.relative_to(PACKAGE)) for p in modules
                     if p.name != "__init__.py" and not re.search(rf"\b{re.escape(p.name)}\b", layout))
    assert unnamed == []
    everywhere = {p.name for top in ("src", "benchmarks", "tests", "notebooks") for p in (ROOT / top).rglob("*.py")}
    assert sorted(set(re.findall(r"\b(\w+\.py)\b", layout)) - everywhere) == []


def test_tests_mirror_the_source_folders():
    test_folders = [p.relative_to(ROOT / "tests") for p in (ROOT / "tests").rglob("*")
                    if p.is_dir() and any(p.glob("test_*.py"))]
    assert test_folders, "no test folders"
    assert sorted(str(f) for f in test_folders if not (PACKAGE / f).is_dir()) == []
