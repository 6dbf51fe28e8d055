"""The shape of app/: no import cycle between its modules, and no package imports one above it.

The import graph is read from the source with ``ast`` (imports inside functions count too), so a
cycle or an upward import fails here before it can fail at run time. Layers, lowest first: a module
may import its own layer and the ones below; siblings in one layer (the API and the web pages) may
not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"

LAYERS: list[tuple[str, ...]] = [
    ("app", "app.core"),  # settings, errors, database base, files, JSON Lines, threads
    ("app.security",),  # roles, principals, API keys, the audit trail
    ("app.registry",),  # records, photos, vectors (their changes are audited), the schema
    ("app.migrations",),  # the schema's revisions (Alembic), run by app.registry.schema by their folder
    ("app.embedding",),  # models and runtimes
    ("app.schemas",),  # what the service answers
    ("app.pipeline",),  # the search, stage by stage
    ("app.service",),  # life cycle, registration, the index; delegates searching
    ("app.jobs",),  # scans, evaluate, manifests, the demo
    ("app.http",),  # what the API and the web share
    ("app.api", "app.web"),
    ("app.main",),  # the app
    ("app.cli",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(APP.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the app modules it imports (a name imported from a package counts as the package,
    or as its submodule when it is one)."""
    modules = {module_name(p): p for p in APP.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{module} belongs to no layer: add it to LAYERS"
    return rank


def top_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "app.pipeline.search" in graph["app.service"]
    assert "app.core.errors" in graph["app.pipeline.decode"]


def test_no_import_cycle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_packages():
    graph = import_graph()
    packages = {top_package(m): set() for m in graph}
    for m, targets in graph.items():
        packages[top_package(m)].update(top_package(t) for t in targets if top_package(t) != top_package(m))
    # "app" itself (its __init__) is the root every module is under: it imports nothing.
    assert cycles({p: t - {"app"} for p, t in packages.items()}) == []


def test_no_package_imports_one_above_it_in_the_flow():
    upward = [f"{m} -> {t}" for m, targets in import_graph().items() for t in targets
              if layer_of(t) > layer_of(m)]
    assert upward == []


def test_siblings_of_a_layer_do_not_import_each_other():
    across = [f"{m} -> {t}" for m, targets in import_graph().items() for t in targets
              if layer_of(t) == layer_of(m) and len(LAYERS[layer_of(m)]) > 1 and m != "app" and t != "app"
              and top_package(t) != top_package(m)]
    assert across == []
