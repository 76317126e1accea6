"""Import cycles among abmil's modules, deferred (function-level) imports included.

    python tools/import_cycles.py [src/abmil]

Builds the module graph from every ``import`` / ``from ... import`` statement anywhere in a module (top level,
functions, ``if TYPE_CHECKING`` blocks alike: a deferred import hides a cycle from Python, not from the design),
and prints each strongly connected component of two or more modules (Tarjan) and one cycle through it. A
``from pkg import name`` counts as an edge to ``pkg.name`` where that is a module, else to ``pkg``; an edge to a
package is an edge to its ``__init__``, and an executed import of ``pkg.mod`` from outside ``pkg`` is also an edge
to ``pkg``'s ``__init__``, which Python runs first (not so an ``if TYPE_CHECKING`` import, which never runs).
Exit status: the number of components (0: no cycles).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of the package at ``root`` (``src/abmil``)."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import abmil.x.y.z` of a name inside a module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
                if id(node) in typing_only:  # never executed: no package __init__ runs
                    continue
                # importing pkg.mod runs pkg/__init__ first (unless the importer is inside pkg, where it has run)
                parent = t.rpartition(".")[0]
                while parent and parent != "abmil":
                    if parent in known and not (name == parent or name.startswith(parent + ".")):
                        found.add(parent)
                    parent = parent.rpartition(".")[0]
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of two or more nodes (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def one_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first within the component)."""
    start, members = comp[0], set(comp)
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "src" / "abmil")
    mods = modules(root)
    graph = {m: imports(m, p, set(mods)) for m, p in mods.items()}
    comps = cycles(graph)
    print(f"{len(mods)} modules, {sum(map(len, graph.values()))} imports, {len(comps)} import cycle(s)")
    for comp in comps:
        print(f"- {len(comp)} modules: {' -> '.join(one_cycle(graph, comp))}")
    return len(comps)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
