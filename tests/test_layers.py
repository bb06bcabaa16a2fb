"""Arrows go one way: no import cycle, and no import from a higher layer into a lower one.

Walks every `import` in hwsearch/**/*.py with `ast` (module level, function level and
TYPE_CHECKING blocks alike: each is an arrow of the design) and checks them against the layers:

    dashboard, cli, bench  ->  search  ->  predictors, profilers, export  ->  kernels  ->  spaces

with `db` used by profilers, predictors, search (and the top layer). Packages of one layer may
use each other one way only (no cycle between packages). `spaces` and `db` import nothing of
ours but the foundation (`hwsearch.errors`, `hwsearch.config`, `hwsearch.__version__`), which any
module may use; the small utilities beside it (`console`, `processes`, `ray_auth`) use only the
foundation and serve every layer above `spaces`. No two modules import each other, directly or
round a loop, anywhere in the package.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hwsearch"

LAYER = {"spaces": 0, "kernels": 1, "profilers": 2, "predictors": 2, "export": 2, "search": 3,
         "bench": 4, "cli": 4, "dashboard": 4}
DB_USERS = {"profilers", "predictors", "search", "bench", "cli", "dashboard"}
FOUNDATION = {"hwsearch", "hwsearch.errors", "hwsearch.config"}
UTILITIES = {"hwsearch.console", "hwsearch.processes", "hwsearch.ray_auth"}
# Arrows the rules above refuse that the design still needs, each with its reason.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("kernels", "db"): "a device's dispatch table keys kernels by their stored key (`KernelConfig.make_key`, "
                       "the one definition of a kernel's identity), so a table stored with a predictor reads back "
                       "the same from any database; db imports nothing of ours, so this makes no cycle",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """The hwsearch modules `name` imports (`from a import b` counts as a.b when a.b is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith("hwsearch") and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def unit(module: str) -> str:
    """The package a module belongs to (`search`, `db`, ...), or the module itself for root modules."""
    parts = module.split(".")
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return module


def refused(src: str, dst: str) -> str | None:
    """Why the arrow src -> dst (units) breaks the layers, or None when it may exist."""
    if dst in FOUNDATION:
        return None
    if src in FOUNDATION | UTILITIES:
        return f"{src} may import only the foundation ({', '.join(sorted(FOUNDATION))})"
    if src in ("spaces", "db"):
        return f"{src} imports nothing of ours but the foundation"
    if dst in UTILITIES:
        return None
    if dst == "db":
        return None if src in DB_USERS else f"db is used by {', '.join(sorted(DB_USERS))} only"
    if LAYER[src] < LAYER[dst]:
        return f"{src} (layer {LAYER[src]}) is below {dst} (layer {LAYER[dst]})"
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_every_unit_has_a_layer() -> None:
    units = {unit(m) for m in MODULES}
    assert units - set(LAYER) - {"db"} - FOUNDATION - UTILITIES == set()


def test_no_import_from_a_higher_layer() -> None:
    bad = []
    for src, targets in sorted(GRAPH.items()):
        for dst in sorted(targets):
            a, b = unit(src), unit(dst)
            why = None if a == b or (a, b) in EXCEPTIONS else refused(a, b)
            if why:
                bad.append(f"{src} -> {dst}: {why}")
    assert not bad, "imports against the layers:\n  " + "\n  ".join(bad)


def test_no_cycle_between_packages() -> None:
    units: dict[str, set[str]] = defaultdict(set)
    for src, targets in GRAPH.items():
        units[unit(src)] |= {unit(t) for t in targets if unit(t) != unit(src)}
    found = cycles(dict(units))
    detail = [" <-> ".join(c) + ": " + "; ".join(f"{s} -> {t}" for s in sorted(GRAPH) for t in sorted(GRAPH[s])
                                                  if unit(s) in c and unit(t) in c and unit(s) != unit(t))
              for c in found]
    assert not found, "import cycles between packages:\n  " + "\n  ".join(detail)


def test_no_cycle_between_modules() -> None:
    found = cycles(GRAPH)
    detail = [" <-> ".join(c) for c in found]
    assert not found, "modules that import each other (directly or round a loop):\n  " + "\n  ".join(detail)


def test_the_walk_sees_function_level_imports() -> None:
    """The checks above are only as good as the walk: it finds an import inside a function."""
    assert "hwsearch.kernels.interpolation" in GRAPH["hwsearch.profilers.sampling"]
    assert "hwsearch.search.client" in GRAPH["hwsearch.cli.jobs"]
