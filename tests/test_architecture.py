"""The package's import rules (DESIGN.md): no import cycle between modules of src/seed, and no
module importing another module's underscore names.

Read from the source with `ast`; nothing is imported. Every `import` counts wherever it sits (module
level, inside a function, under `try`), except those under `if TYPE_CHECKING:`, which never run and
so cannot close a cycle (they still may not name another module's underscore names). An edge goes
to the module an import names (`from seed.a import b` is an edge to `seed.a.b` when that is a
module, else to `seed.a`); importing a submodule is not counted as an edge to its package's
`__init__`. The checker is tested on small packages written to a temp dir, so a pass on src/seed is
not a checker that finds nothing.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass(frozen=True)
class Edge:
    """One import statement of `source` that runs `target` (both dotted module names)."""

    source: str
    target: str
    line: int
    type_only: bool


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_paths(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `package` under `src`."""
    found = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement in the tree, with whether it sits under `if TYPE_CHECKING:`."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, type_only))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return found


def _from_base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@dataclass
class ModuleImports:
    """What one module imports: its edges, the underscore names it takes, the names it binds."""

    edges: list[Edge]
    private_imports: list[tuple[int, str]]  # (line, "seed.x._y")
    bindings: dict[str, str]  # local name -> the package module it refers to


def read_imports(module: str, path: Path, known: dict[str, Path], package: str) -> ModuleImports:
    tree = ast.parse(path.read_text(), filename=str(path))
    edges, private, bindings = [], [], {}
    inside = (package, f"{package}.")
    for node, type_only in _imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith(inside) and alias.name != package:
                    continue
                edges.append(Edge(module, alias.name, node.lineno, type_only))
                if any(is_private(part) for part in alias.name.split(".")):
                    private.append((node.lineno, alias.name))
                if alias.asname:
                    bindings[alias.asname] = alias.name
                else:
                    head = alias.name.split(".")[0]
                    bindings[head] = head
            continue
        base = _from_base(module, path, node)
        if not base.startswith(inside) and base != package:
            continue
        for alias in node.names:
            full = f"{base}.{alias.name}"
            target = full if full in known else base
            edges.append(Edge(module, target, node.lineno, type_only))
            if is_private(alias.name) or any(is_private(p) for p in base.split(".")):
                private.append((node.lineno, full))
            if full in known:
                bindings[alias.asname or alias.name] = full
    attribute_uses = _private_attributes(tree, bindings, known)
    return ModuleImports(edges, private + attribute_uses, bindings)


def _dotted(node: ast.expr, bindings: dict[str, str]) -> str | None:
    """`a.b.c` as a dotted name with `a` replaced by the module it is bound to, else None."""
    if isinstance(node, ast.Name):
        return bindings.get(node.id)
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value, bindings)
        return f"{head}.{node.attr}" if head else None
    return None


def _private_attributes(tree: ast.Module, bindings: dict[str, str],
                        known: dict[str, Path]) -> list[tuple[int, str]]:
    """`m._y` where `m` is an imported package module: (line, "seed.m._y")."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = _dotted(node.value, bindings)
            if owner in known:
                found.append((node.lineno, f"{owner}.{node.attr}"))
    return found


def import_graph(src: Path, package: str) -> dict[str, ModuleImports]:
    known = module_paths(src, package)
    return {name: read_imports(name, path, known, package) for name, path in known.items()}


def find_cycles(graph: dict[str, ModuleImports]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected group of modules, runtime imports only."""
    succ: dict[str, dict[str, Edge]] = {name: {} for name in graph}
    for name, imports in graph.items():
        for edge in imports.edges:
            if not edge.type_only and edge.target != name and edge.target in succ:
                succ[name].setdefault(edge.target, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in succ[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(succ):
        if v not in index:
            strongconnect(v)
    return [_cycle_through(group, succ) for group in sorted(groups)]


def _cycle_through(group: list[str], succ: dict[str, dict[str, Edge]]) -> list[Edge]:
    """The shortest cycle from the group's first module back to it (breadth first)."""
    start, members = group[0], set(group)
    came_from: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w, edge in succ[v].items():
                if w == start:
                    path = [edge]
                    while path[0].source != start:
                        path.insert(0, came_from[path[0].source])
                    return path
                if w in members and w not in came_from:
                    came_from[w] = edge
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def describe_cycle(cycle: list[Edge]) -> str:
    names = " -> ".join([cycle[0].source, *(e.target for e in cycle)])
    lines = ", ".join(f"{e.source} line {e.line}" for e in cycle)
    return f"{names} ({lines})"


def private_name_uses(graph: dict[str, ModuleImports]) -> list[str]:
    """"module line N: seed.x._y" for each use of another module's underscore name."""
    found = []
    for name, imports in graph.items():
        for line, used in sorted(imports.private_imports):
            owner = used.rsplit(".", 1)[0]
            if owner != name:
                found.append(f"{name} line {line}: {used}")
    return found


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_seed_has_no_import_cycle():
    cycles = find_cycles(import_graph(SRC, "seed"))
    assert not cycles, "import cycles in src/seed:\n" + "\n".join(map(describe_cycle, cycles))


def test_no_seed_module_uses_another_modules_underscore_names():
    uses = private_name_uses(import_graph(SRC, "seed"))
    assert not uses, "underscore names used outside their module:\n" + "\n".join(uses)


def test_a_cycle_through_a_function_level_import_is_found_and_named(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import helper\n",
        "pkg/b.py": "def helper():\n    from pkg import c\n    return c\n",
        "pkg/c.py": "import os\n\nimport pkg.a as a\n",
        "pkg/d.py": "from pkg import a\n",
    })
    cycles = find_cycles(import_graph(src, "pkg"))
    assert [describe_cycle(c) for c in cycles] == [
        "pkg.a -> pkg.b -> pkg.c -> pkg.a (pkg.a line 1, pkg.b line 2, pkg.c line 3)"]


def test_relative_imports_count_and_type_checking_imports_do_not(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from . import x\n",
        "pkg/sub/x.py": "from ..y import f\n",
        "pkg/y.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                    "    from pkg.sub.x import T\n\ndef f():\n    from pkg.sub import x\n",
    })
    graph = import_graph(src, "pkg")
    assert [(e.target, e.type_only) for e in graph["pkg.y"].edges] == [
        ("pkg.sub.x", True), ("pkg.sub.x", False)]
    assert [describe_cycle(c) for c in find_cycles(graph)] == [
        "pkg.sub.x -> pkg.y -> pkg.sub.x (pkg.sub.x line 1, pkg.y line 7)"]


def test_underscore_names_taken_by_import_or_attribute_are_found(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "__version__ = '1'\n",
        "pkg/a.py": "_secret = 1\n__all__ = []\n\ndef _own():\n    return _secret\n",
        "pkg/b.py": "from pkg.a import _secret, __all__\nfrom pkg import __version__\n",
        "pkg/c.py": "import pkg.a\nfrom pkg import a as m\n\n"
                    "x = pkg.a._own()\ny = m._secret\nz = m.__all__\n",
        "pkg/d.py": "from ._e import public\n",
        "pkg/_e.py": "public = 1\nclass K:\n    _slot = 1\nw = K._slot\n",
    })
    assert sorted(private_name_uses(import_graph(src, "pkg"))) == [
        "pkg.b line 1: pkg.a._secret",
        "pkg.c line 4: pkg.a._own",
        "pkg.c line 5: pkg.a._secret",
        "pkg.d line 1: pkg._e.public",
    ]
