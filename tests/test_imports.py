"""The package's import graph flows one way: no cycles, and the library never imports an
application (``native_mm.apps.*``). Every import statement counts: the lazy ones inside
functions and the ``if TYPE_CHECKING:`` ones too (a type-only cycle is still two modules
that cannot be read apart)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "native_mm"
APPS = "native_mm.apps"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, here: str, modules: set[str], is_pkg: bool = False) -> set[str]:
    """The package modules a module imports (``from a import b`` is ``a.b`` if a module)."""
    found: set[str] = set()
    package = here.split(".") if is_pkg else here.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: level 1 is this module's package
                pkg = package[: len(package) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != here}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    return {
        m: _imports(ast.parse(p.read_text(encoding="utf-8")), m, modules, p.name == "__init__.py")
        for m, p in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (iterative DFS, three colours)."""
    state: dict[str, int] = {}
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def is_app(module: str) -> bool:
    return module == APPS or module.startswith(APPS + ".")


def test_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {find_cycle(import_graph())}"


def test_library_never_imports_an_application():
    bad = [
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        if not is_app(m)
        for d in deps
        if is_app(d)
    ]
    assert not bad, bad


def test_the_checks_can_fail():
    """The graph walker sees lazy and relative imports, and the cycle finder finds cycles."""
    mods = {"native_mm.a", "native_mm.b", "native_mm.apps.x"}
    tree = ast.parse("def f():\n    from native_mm import b\n    from .apps import x\n")
    assert _imports(tree, "native_mm.a", mods) == {"native_mm.b", "native_mm.apps.x"}
    tc = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import native_mm.b\n")
    assert _imports(tc, "native_mm.a", mods) == {"native_mm.b"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_repo_relative_paths_in_the_library():
    """Library modules never find files through the clone's layout (``parents[n]``)."""
    lib = [p for p in PKG.rglob("*.py") if not is_app(module_name(p))]
    assert len(lib) > 20
    assert [str(p) for p in lib if "parents[" in p.read_text(encoding="utf-8")] == []


def test_library_files_stay_readable():
    """Every module of the package fits in 500 lines (split by responsibility beyond)."""
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}  # fmt: skip
    assert not long, long
