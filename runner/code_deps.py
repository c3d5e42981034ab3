"""Which of the repository's source files a module runs: its imports, followed transitively, read from the source.

A stage's cache key covers these files (runner/pipeline.py), so nobody keeps a list of them by hand:
- every `import x` / `from x import y` / relative import anywhere in a file (inside functions too) that resolves
  to a file in this repository;
- every string literal naming one of the repository's modules (`"runner.gateway"`): that is how our code runs
  our code in another process (`python -m runner.gateway ...`);
- the `__init__.py` of every package on the way, since importing a module runs them.
Files a stage reads that are not Python imports (lm-eval task folders, say) are its explicit `RUNS` list.
Nothing is imported to find this out: files are parsed with `ast`.
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

from runner.env import REPO

_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def module_file(name: str) -> Path | None:
    """The repository file that module `name` is, if it is one of ours."""
    base = REPO.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def module_name(path: Path) -> str:
    rel = path.resolve().relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _package_of(path: Path) -> str:
    name = module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


@functools.lru_cache(maxsize=None)
def _direct(path: Path, mtime_ns: int) -> tuple[Path, ...]:
    """Repository files that `path` names by import or as a module string (not followed further)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package_of(path).split(".")
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(p for p in [*pkg, base] if p)
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names if a.name != "*"]  # `from pkg import submodule`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.match(node.value):
            names += [node.value, f"{node.value}.__main__"]  # `python -m package` runs its __main__.py
    found = {f for f in map(module_file, names) if f is not None and f != path}
    return tuple(sorted(found))


def direct_imports(path: Path) -> tuple[Path, ...]:
    path = path.resolve()
    return _direct(path, path.stat().st_mtime_ns)


def _packages(path: Path) -> list[Path]:
    """The __init__.py files Python runs before it runs `path`."""
    out, d = [], path.parent
    while d != REPO and (d / "__init__.py").is_file():
        out.append(d / "__init__.py")
        d = d.parent
    return out


def closure(start: Path | str) -> list[Path]:
    """`start` (a file, or a module name) and every repository file it runs, transitively; sorted."""
    first = Path(start) if not isinstance(start, str) or start.endswith(".py") else module_file(start)
    if first is None:
        raise ValueError(f"{start}: not a module of this repository")
    seen: set[Path] = set()
    todo = [first.resolve()]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo += [g for g in (*direct_imports(f), *_packages(f)) if g not in seen]
    return sorted(seen)


def files_under(rel: str) -> list[Path]:
    """An explicit dependency: one file, or every file in a folder (caches left out)."""
    p = REPO / rel
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(f"{rel}: listed as a dependency but not in the repository")
    return sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def import_graph(package: str = "runner") -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports (package __init__ edges left out): for cycle checks."""
    root = REPO / package
    graph: dict[str, set[str]] = {}
    for f in sorted(root.rglob("*.py")):
        graph[module_name(f)] = {module_name(g) for g in direct_imports(f)
                                 if g.resolve().is_relative_to(root.resolve())}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (and self-imports): each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found
