"""The library's import graph has no cycle, and imports sit at the top of their modules.

Read from the source (``ast``), not by importing: a module's ``mmcore`` imports at module
level are its edges; importing ``a.b.c`` runs the packages ``a.b`` above it too.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mmcore"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmcore"):
        return [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("mmcore")]
    return []


def import_graph() -> tuple[dict[str, set[str]], dict[str, list[int]]]:
    """(module -> modules its top level imports, module -> lines of imports inside functions)."""
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph, inner = {}, {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for stmt in tree.body if not isinstance(stmt, (ast.FunctionDef, ast.ClassDef))
               for n in ast.walk(stmt)}
        edges = set()
        for node in ast.walk(tree):
            targets = [t for t in _imports(node) if t in files]
            if targets and id(node) not in top:
                inner.setdefault(name, []).append(node.lineno)
            for target in targets if id(node) in top else []:
                parts = target.split(".")
                above = {".".join(parts[:i]) for i in range(2, len(parts))}
                # importing a module runs the packages above it, but those above this very
                # module have already started; a package named explicitly is a real edge
                edges |= {target} | {p for p in above if not name.startswith(p + ".")}
        graph[name] = {e for e in edges if e in files and e != name}
    return graph, inner


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    return next((c for n in sorted(graph) if n not in state and (c := visit(n, [n]))), None)


def test_no_import_cycle():
    graph, _ = import_graph()
    assert "mmcore.data.check" in graph and "mmcore.data.manifest" in graph["mmcore.data.check"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph, _ = import_graph()
    assert "mmcore.data" in graph["mmcore.data.check"]  # the pass uses the registry
    graph["mmcore.data.collate"].add("mmcore.data.check")  # as it once did
    assert _cycle(graph) is not None


def test_the_data_layer_and_cli_import_at_the_top():
    _, inner = import_graph()
    mine = {m: lines for m, lines in inner.items() if m.startswith("mmcore.data")}
    assert mine == {}
    # the CLI's one: the commands (and the training stack) load once the arguments parse
    assert len(inner.get("mmcore.cli", [])) == 1
    assert set(inner) <= {"mmcore.cli", "mmcore.peft", "mmcore.weights"}, sorted(inner)
    graph, _ = import_graph()
    # the bad-input primitives sit below the readers and the pass, never above them
    for low in ("mmcore.data.problems", "mmcore.data.rows", "mmcore.data.texts",
                "mmcore.data.images", "mmcore.data.sampling"):
        assert not graph[low] & {"mmcore.data", "mmcore.data.check", "mmcore.data.manifest"}
