"""The layers, as DESIGN.md draws them, held by the imports themselves.

* ``cloud`` (the contract) imports none of the other packages;
* ``drivers`` (the readers) imports none of ``agent``, ``cloud``, ``ui``;
* ``agent`` (the daemon) never imports ``ui`` or ``sandbox``;
* no import circle inside ``agent`` (imports at module level, not those
  under ``if TYPE_CHECKING:``);
* no source module over 600 lines (``NOT_YET_SPLIT`` lists any held at
  their size until they are split; none today);
* no function outside the tests is named ``test_*`` (pytest would collect it
  wherever a test module imports it).

Imports are read from the source (``ast``), so a deferred import inside a
function counts for the layers too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "cloud", "drivers", "ui", "sandbox")
MAX_LINES = 600
# Over the limit today, and how long: it may shrink, never grow, and leaves
# this table when it is split (the test says so once it fits).
NOT_YET_SPLIT: dict[str, int] = {}

FORBIDDEN = {
    "cloud": {"agent", "drivers", "ui", "sandbox"},
    "drivers": {"agent", "cloud", "ui", "sandbox"},
    "agent": {"ui", "sandbox"},
}


def _modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        yield ".".join(parts), path


def _imports(path: Path, *, top_level_only: bool) -> Iterator[str]:
    """The absolute module names ``path`` imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    nodes: list[ast.AST]
    if top_level_only:
        nodes = [n for n in tree.body if not _is_type_checking_block(n)]
        nodes = [sub for n in nodes for sub in _walk_skipping_functions(n)]
    else:
        nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            # ``from agent import journal`` imports the module agent.journal
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _is_type_checking_block(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )


def _walk_skipping_functions(node: ast.AST) -> Iterator[ast.AST]:
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield from _walk_skipping_functions(child)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers(package: str) -> None:
    wrong = sorted(
        f"{name} imports {imported}"
        for name, path in _modules(package)
        for imported in _imports(path, top_level_only=False)
        if imported.split(".")[0] in FORBIDDEN[package]
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_circle_inside_agent() -> None:
    modules = dict(_modules("agent"))
    graph = {
        name: sorted({i for i in _imports(path, top_level_only=True) if i in modules and i != name})
        for name, path in modules.items()
    }
    circles = [c for c in _strongly_connected(graph) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_circles() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert [c for c in _strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]


def test_no_source_module_over_600_lines() -> None:
    sizes = {
        str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines())
        for package in (*PACKAGES, "benchmarks")
        for _, path in _modules(package)
    }
    long = sorted(
        f"{name}: {n} lines"
        for name, n in sizes.items()
        if n > max(MAX_LINES, NOT_YET_SPLIT.get(name, 0))
    )
    assert not long, "\n".join(long)
    done = sorted(name for name in NOT_YET_SPLIT if sizes.get(name, 0) <= MAX_LINES)
    assert not done, f"split now: take {done} out of NOT_YET_SPLIT"


def test_nothing_outside_the_tests_is_named_like_a_test() -> None:
    named = sorted(
        f"{name}.{node.name}"
        for package in (*PACKAGES, "benchmarks")
        for name, path in _modules(package)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.name.lower().startswith("test")
    )
    assert not named, "\n".join(named)
