"""The house's layering, checked on the source: what imports what, and paths named once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "retrieval", "trainers")


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Modules ``path`` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_domain_packages_never_import_the_kafka_edge() -> None:
    for package in ("retrieval", "trainers"):
        for name, path in _modules(package).items():
            edge = sorted(m for m in _imports(path) if m.split(".")[0] == "streams")
            assert not edge, f"{name} imports {edge}: retrieval/ and trainers/ stay Kafka-free"


def test_no_import_cycle_among_module_level_imports() -> None:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        modules.update(_modules(package))
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: run at import
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep] if dep in path else [node, dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_state_paths_are_named_once() -> None:
    spelled = re.compile(r"/\s*\"(registry|online)\"")  # e.g. data_dir / "registry"
    where = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "streams").rglob("*.py"))
        if spelled.search(path.read_text())
    ]
    assert where == ["streams/paths.py"], where
