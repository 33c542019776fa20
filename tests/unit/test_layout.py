"""The house rules that a reader relies on, checked on the source (ARCHITECTURE.md "Rules"):
no import circle, the layers import downwards only, only store/ speaks SQL, codecs are pure,
and no module grows past ~450 lines unless its docstring says why it is one piece."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "netbootd"
MAX_LINES = 460


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The netbootd modules `path` imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_no_import_circle() -> None:
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how a package is assembled, not a
    # circle between pieces of code: leave those edges out
    for m in graph:
        graph[m] = {d for d in graph[m] if not d.startswith(m + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_layers_import_downwards() -> None:
    """codec/ imports only model and errors; store/ imports no server, CLI or policy; servers
    never import the CLI; nothing imports the CLI but itself and __main__."""
    modules = _modules()
    for m, p in modules.items():
        deps = _imports(p, modules)
        if m.startswith("netbootd.codec"):
            allowed = {"netbootd.model", "netbootd.errors", "netbootd.codec"}
            assert all(d in allowed or d.startswith("netbootd.codec.") for d in deps), (m, deps)
        if m.startswith("netbootd.store"):
            bad = {d for d in deps if d.split(".")[1] in ("servers", "cli", "policy", "app")}
            assert not bad, (m, bad)
        if not m.startswith("netbootd.cli") and m != "netbootd.__main__":
            assert not any(d.startswith("netbootd.cli") for d in deps), (m, deps)


def test_only_the_store_speaks_sql() -> None:
    for m, p in _modules().items():
        if m.startswith("netbootd.store"):
            continue
        assert "import sqlite3" not in p.read_text(), f"{m} imports sqlite3"


def test_codecs_are_pure() -> None:
    impure = ("socket", "logging", "time", "asyncio", "subprocess", "threading")
    for m, p in _modules().items():
        if not m.startswith("netbootd.codec"):
            continue
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            assert not any(n.split(".")[0] in impure for n in names), (m, names)


def test_modules_stay_small_or_say_why() -> None:
    for m, p in _modules().items():
        lines = len(p.read_text().splitlines())
        if lines <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(p.read_text())) or ""
        assert "one piece" in doc.lower(), f"{m} has {lines} lines and no word on why"
