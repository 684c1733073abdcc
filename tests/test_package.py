"""The package's shape, read from its source with `ast`: no two modules import each other, even through
others, and no function takes more than ten parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vwe"
MAX_PARAMETERS = 10


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules `name` imports, anywhere in it (a function's own import included)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: the package imports absolutely (`from vwe.x import ...`)"
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for target in targets:
            while target and target not in known:  # vwe.data.load_dataset -> vwe.data
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def import_graph() -> dict[str, set[str]]:
    trees = sources()
    known = set(trees)
    # a package's __init__ importing its own modules is how a package is made, not a circle
    return {name: {m for m in imports(name, tree, known) if not m.startswith(name + ".")}
            for name, tree in trees.items()}


def test_the_cycle_finder_finds_a_planted_circle():
    """The check below can fail: a circle through three modules is found, a chain is not."""
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    tree = ast.parse("from vwe.engine import Step\nimport vwe.data.folder\n"
                     "def f():\n    from vwe import runs\n")
    known = {"vwe", "vwe.engine", "vwe.data", "vwe.data.folder", "vwe.runs"}
    assert imports("vwe.fast_step", tree, known) == {"vwe", "vwe.engine", "vwe.data.folder", "vwe.runs"}


def test_no_module_of_the_package_imports_itself_through_others():
    graph = import_graph()
    assert "vwe.engine" in graph and "vwe.fast_step" in graph["vwe.pretrain"]  # the graph is the package's
    assert cycle(graph) is None


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in ("self", "cls")]


def test_no_function_takes_more_than_ten_parameters():
    wide = [f"{name}.{node.name} ({len(parameters(node))})" for name, tree in sources().items()
            for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and len(parameters(node)) > MAX_PARAMETERS]
    assert wide == []


@pytest.mark.parametrize("source, count", [("def f(a, b=1, *c, d, **e): pass", 5),
                                           ("class C:\n    def m(self, a): pass", 1)])
def test_parameters_are_counted_as_a_caller_sees_them(source, count):
    fn = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef))
    assert len(parameters(fn)) == count
